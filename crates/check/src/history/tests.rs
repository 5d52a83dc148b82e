//! Tests of recording, validation and the JSON Lines format.

use proptest::prelude::*;

use super::*;
use crate::synthetic::{atomic_store_history, SyntheticConfig};

fn write(value: Value) -> Op {
    Op::Write {
        key: "x".to_owned(),
        value,
    }
}

#[test]
fn recorder_pairs_invocations_with_completions() {
    let mut history = History::new();
    let a = history.invoke(Process(1), write(1), 10);
    let b = history.invoke(
        Process(2),
        Op::Read {
            key: "x".to_owned(),
        },
        15,
    );
    let c = history.invoke(Process(3), write(2), 16);
    let d = history.invoke(Process(4), write(3), 17);
    assert_eq!(history.ok(b, OpResult::ReadOk(Some(1)), 30), Ok(()));
    assert_eq!(history.ok(a, OpResult::WriteOk, 40), Ok(()));
    assert_eq!(history.fail(c, 41), Ok(()));
    assert_eq!(history.info(d, 42), Ok(()));
    let pending = history.invoke(Process(1), write(4), 50);
    assert_eq!(history.len(), 9);

    let operations = history.operations();
    let summary: Vec<(OpId, u64, &Completion)> = operations
        .iter()
        .map(|o| (o.id, o.invoke, &o.completion))
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                a,
                10,
                &Completion::Ok {
                    result: OpResult::WriteOk,
                    time: 40
                }
            ),
            (
                b,
                15,
                &Completion::Ok {
                    result: OpResult::ReadOk(Some(1)),
                    time: 30
                }
            ),
            (c, 16, &Completion::Fail { time: 41 }),
            (d, 17, &Completion::Info { time: 42 }),
            (pending, 50, &Completion::Pending),
        ]
    );
}

#[test]
fn recorder_rejects_misuse_with_named_errors() {
    let mut history = History::new();
    let id = history.invoke(Process(1), write(1), 10);
    assert_eq!(
        history.ok(OpId(99), OpResult::WriteOk, 20),
        Err(HistoryError::NotInvoked { id: OpId(99) })
    );
    assert_eq!(
        history.ok(id, OpResult::WriteOk, 5),
        Err(HistoryError::CompletesBeforeInvoke {
            id,
            invoke: 10,
            complete: 5
        })
    );
    assert!(matches!(
        history.ok(id, OpResult::CasOk(true), 20),
        Err(HistoryError::ResultMismatch { .. })
    ));
    assert_eq!(history.ok(id, OpResult::WriteOk, 20), Ok(()));
    assert_eq!(
        history.info(id, 30),
        Err(HistoryError::AlreadyCompleted { id })
    );
    // Rejected events leave no trace.
    assert_eq!(history.len(), 2);
}

#[test]
fn event_lines_have_a_stable_readable_shape() {
    let mut history = History::new();
    let id = history.invoke(Process(1), write(5), 100);
    assert_eq!(history.ok(id, OpResult::WriteOk, 250), Ok(()));
    let read = history.invoke(
        Process(2),
        Op::Read {
            key: "x".to_owned(),
        },
        300,
    );
    assert_eq!(history.ok(read, OpResult::ReadOk(None), 310), Ok(()));
    let cas = Op::Cas {
        key: "x".to_owned(),
        expected: None,
        new: 7,
    };
    let cas = history.invoke(Process(2), cas, 400);
    assert_eq!(history.info(cas, 410), Ok(()));
    let expected = concat!(
        r#"{"id":0,"process":1,"time":100,"kind":"invoke","op":{"type":"write","key":"x","value":5}}"#,
        "\n",
        r#"{"id":0,"process":1,"time":250,"kind":"ok","op":{"type":"write","key":"x","value":5},"result":{"type":"write_ok"}}"#,
        "\n",
        r#"{"id":1,"process":2,"time":300,"kind":"invoke","op":{"type":"read","key":"x"}}"#,
        "\n",
        r#"{"id":1,"process":2,"time":310,"kind":"ok","op":{"type":"read","key":"x"},"result":{"type":"read_ok","value":null}}"#,
        "\n",
        r#"{"id":2,"process":2,"time":400,"kind":"invoke","op":{"type":"cas","key":"x","expected":null,"new":7}}"#,
        "\n",
        r#"{"id":2,"process":2,"time":410,"kind":"info","op":{"type":"cas","key":"x","expected":null,"new":7}}"#,
        "\n",
    );
    assert_eq!(history.to_jsonl(), expected);
}

#[test]
fn jsonl_round_trip_keeps_every_event() {
    let config = SyntheticConfig {
        operations: 500,
        info_percent: 5,
        fail_percent: 5,
        ..Default::default()
    };
    let history = atomic_store_history(&config, 11);
    let text = history.to_jsonl();
    let back = History::from_jsonl(&text).map_err(|error| error.to_string());
    let back = back.as_ref().map(History::events);
    assert_eq!(back, Ok(history.events()));
    assert_eq!(back.map(<[Event]>::len), Ok(1_000));
}

#[test]
fn jsonl_skips_blank_lines_and_accepts_any_event_order_that_fits() {
    let text = r#"
{"id":7,"process":1,"time":100,"kind":"invoke","op":{"type":"delete","key":"k"}}

{"id":3,"process":2,"time":50,"kind":"invoke","op":{"type":"read","key":"k"}}
{"id":3,"process":2,"time":150,"kind":"ok","op":{"type":"read","key":"k"},"result":{"type":"read_ok","value":4}}
{"id":7,"process":1,"time":120,"kind":"ok","op":{"type":"delete","key":"k"},"result":{"type":"delete_ok"}}
"#;
    let history = History::from_jsonl(text).map_err(|error| error.to_string());
    let ids: Result<Vec<OpId>, _> = history.map(|h| h.operations().iter().map(|o| o.id).collect());
    assert_eq!(ids, Ok(vec![OpId(7), OpId(3)]));
}

/// The error `from_jsonl` gives for `text`, as a string.
fn jsonl_error(text: &str) -> String {
    match History::from_jsonl(text) {
        Ok(_) => panic!("accepted bad input:\n{text}"),
        Err(error) => error.to_string(),
    }
}

const INVOKE: &str =
    r#"{"id":1,"process":1,"time":10,"kind":"invoke","op":{"type":"write","key":"x","value":1}}"#;

#[test]
fn jsonl_errors_name_the_line_and_the_problem() {
    let cases: Vec<(String, &str)> = vec![
        ("not json".into(), "line 1: not a valid event"),
        (format!("{INVOKE}\n{{\"id\":1"), "line 2: not a valid event"),
        (
            r#"{"id":1,"process":1,"time":-5,"kind":"invoke","op":{"type":"read","key":"x"}}"#.into(),
            "line 1: not a valid event: invalid value: integer `-5`",
        ),
        (
            r#"{"id":1,"process":1,"time":10,"kind":"start","op":{"type":"read","key":"x"}}"#.into(),
            "unknown variant `start`",
        ),
        (
            r#"{"id":1,"process":1,"time":10,"kind":"invoke","op":{"type":"increment","key":"x"}}"#.into(),
            "unknown variant `increment`",
        ),
        (
            r#"{"id":1,"process":1,"time":10,"kind":"invoke","op":{"type":"write","key":"x"}}"#.into(),
            "missing field `value`",
        ),
        (
            r#"{"id":1,"process":1,"time":10,"kind":"invoke","op":{"type":"read","key":"x"},"node":3}"#.into(),
            "unknown field `node`",
        ),
        (
            format!("{INVOKE}\n{}", r#"{"id":1,"process":1,"time":20,"kind":"ok","op":{"type":"write","key":"x","value":1}}"#),
            "line 2: not a valid event: an \"ok\" event needs a \"result\"",
        ),
        (
            r#"{"id":1,"process":1,"time":10,"kind":"invoke","op":{"type":"read","key":"x"},"result":{"type":"write_ok"}}"#.into(),
            "only an \"ok\" event may carry a \"result\"",
        ),
        (format!("{INVOKE}\n{INVOKE}"), "line 2: operation #1 is invoked twice"),
        (
            r#"{"id":4,"process":1,"time":10,"kind":"fail","op":{"type":"read","key":"x"}}"#.into(),
            "line 1: operation #4 completes but was never invoked",
        ),
        (
            format!("{INVOKE}\n{}", r#"{"id":1,"process":1,"time":9,"kind":"info","op":{"type":"write","key":"x","value":1}}"#),
            "line 2: operation #1 completes at 9 ns, before it was invoked at 10 ns",
        ),
        (
            format!("{INVOKE}\n{}", r#"{"id":1,"process":2,"time":20,"kind":"info","op":{"type":"write","key":"x","value":1}}"#),
            "line 2: operation #1 was invoked by p1 but completed by p2",
        ),
        (
            format!("{INVOKE}\n{}", r#"{"id":1,"process":1,"time":20,"kind":"info","op":{"type":"write","key":"y","value":1}}"#),
            "line 2: operation #1 was invoked as `write \"x\" 1` but completed as `write \"y\" 1`",
        ),
        (
            format!("{INVOKE}\n{}", r#"{"id":1,"process":1,"time":20,"kind":"ok","op":{"type":"write","key":"x","value":1},"result":{"type":"read_ok","value":1}}"#),
            "line 2: operation #1 (`write \"x\" 1`) cannot return ReadOk(Some(1))",
        ),
        (
            format!("{INVOKE}\n{}\n{}",
                r#"{"id":1,"process":1,"time":20,"kind":"fail","op":{"type":"write","key":"x","value":1}}"#,
                r#"{"id":1,"process":1,"time":30,"kind":"info","op":{"type":"write","key":"x","value":1}}"#),
            "line 3: operation #1 completes twice",
        ),
    ];
    for (text, expected) in cases {
        let error = jsonl_error(&text);
        assert!(
            error.contains(expected),
            "for input\n{text}\nexpected {expected:?}, got {error:?}"
        );
    }
}

#[test]
fn recording_after_import_never_reuses_an_id() {
    let text = format!(
        "{}\n{}",
        r#"{"id":18446744073709551615,"process":1,"time":10,"kind":"invoke","op":{"type":"read","key":"x"}}"#,
        r#"{"id":0,"process":1,"time":10,"kind":"invoke","op":{"type":"read","key":"x"}}"#
    );
    let mut history = History::from_jsonl(&text).unwrap_or_else(|error| panic!("{error}"));
    let fresh = history.invoke(Process(2), write(1), 20);
    assert_eq!(fresh, OpId(1));
    let next = history.invoke(Process(2), write(2), 30);
    assert_eq!(next, OpId(2));
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in ".{0,400}") {
        let _ = History::from_jsonl(&text);
    }

    #[test]
    fn mangled_valid_histories_never_panic(seed: u64, cut in 0usize..4_000, byte: u8) {
        let config = SyntheticConfig { operations: 40, ..Default::default() };
        let text = atomic_store_history(&config, seed).to_jsonl();
        let mut bytes = text.into_bytes();
        if !bytes.is_empty() {
            let at = cut % bytes.len();
            bytes[at] = byte;
        }
        let mangled = String::from_utf8_lossy(&bytes);
        let _ = History::from_jsonl(&mangled);
    }
}
