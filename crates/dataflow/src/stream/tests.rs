//! Tests of the window operator against the Dataflow Model's rules, and of the executor's
//! exactly-once output against batch answers.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)] // tests pace a source by the wall clock

use super::exec::{self, ExecConfig};
use super::jobs::{self, InputSpec, JobSpec};
use super::time::EventTime;
use super::window::*;
use std::collections::BTreeMap;
use std::time::Duration;

type Out = Collect<u64, u64, ()>;

fn counts(
    assigner: WindowAssigner,
    lateness: u64,
    trigger: Trigger,
) -> WindowOperator<u64, Count<()>> {
    WindowOperator::new(assigner, lateness, trigger, Count::new())
}

fn w(start: u64, end: u64) -> Window {
    Window {
        start: EventTime(start),
        end: EventTime(end),
    }
}

#[test]
fn sliding_windows_hold_every_record_size_over_slide_times() {
    let a = WindowAssigner::Sliding {
        size_ms: 30,
        slide_ms: 10,
    };
    let mut got = Vec::new();
    a.assign(EventTime(25), |x| got.push(x));
    got.sort();
    assert_eq!(got, vec![w(0, 30), w(10, 40), w(20, 50)]);
    let mut got = Vec::new();
    a.assign(EventTime(5), |x| got.push(x));
    assert_eq!(got, vec![w(0, 30)]);
}

/// §2.3–2.4: a pane fires on time when the watermark passes the window's end, and not
/// before.
#[test]
fn panes_fire_when_the_watermark_passes_the_window_end() {
    let mut op = counts(
        WindowAssigner::Tumbling { size_ms: 10 },
        0,
        Trigger::default(),
    );
    let mut out = Out::default();
    for ts in [3, 7, 12, 1] {
        op.on_record(&1, EventTime(ts), &(), &mut out);
    }
    op.on_watermark(EventTime(9), &mut out);
    assert!(out.fired.is_empty());
    op.on_watermark(EventTime(10), &mut out);
    assert_eq!(out.fired.len(), 1);
    assert_eq!(out.fired[0].window, w(0, 10));
    assert_eq!(out.fired[0].value, 3);
    assert_eq!(out.fired[0].timing, Timing::OnTime);
    op.on_watermark(EventTime::MAX, &mut out);
    assert_eq!(out.fired.len(), 2);
    assert_eq!(op.open_panes(), 0);
}

/// Late data: a record inside the allowed lateness fires a late pane with the
/// accumulated value; one beyond it goes to the side output and changes nothing.
#[test]
fn late_records_beyond_allowed_lateness_go_to_the_side_output() {
    let trigger = Trigger {
        early_every: None,
        late_firings: true,
    };
    let mut op = counts(WindowAssigner::Tumbling { size_ms: 10 }, 5, trigger);
    let mut out = Out::default();
    op.on_record(&1, EventTime(2), &(), &mut out);
    op.on_watermark(EventTime(12), &mut out);
    assert_eq!(out.fired.len(), 1);
    // Within lateness: end 10 + 5 > 12.
    op.on_record(&1, EventTime(4), &(), &mut out);
    assert_eq!(out.fired.len(), 2);
    assert_eq!(out.fired[1].timing, Timing::Late);
    assert_eq!(out.fired[1].value, 2);
    op.on_watermark(EventTime(15), &mut out);
    // Beyond lateness: the window's state is gone and the record is side output.
    op.on_record(&1, EventTime(5), &(), &mut out);
    assert_eq!(out.fired.len(), 2);
    assert_eq!(out.late, vec![(1, EventTime(5), ())]);
    assert_eq!(op.late_records(), 1);
    assert_eq!(op.open_panes(), 0);
}

#[test]
fn early_firings_come_every_n_records_before_the_watermark() {
    let trigger = Trigger {
        early_every: Some(2),
        late_firings: false,
    };
    let mut op = counts(WindowAssigner::Tumbling { size_ms: 100 }, 0, trigger);
    let mut out = Out::default();
    for ts in 0..5 {
        op.on_record(&7, EventTime(ts), &(), &mut out);
    }
    let early: Vec<u64> = out.fired.iter().map(|f| f.value).collect();
    assert_eq!(early, vec![2, 4]);
    assert!(out.fired.iter().all(|f| f.timing == Timing::Early));
    op.on_watermark(EventTime(100), &mut out);
    assert_eq!(
        out.fired.last().map(|f| (f.timing, f.value)),
        Some((Timing::OnTime, 5))
    );
}

#[test]
fn sessions_merge_when_a_record_bridges_the_gap() {
    let mut op = counts(
        WindowAssigner::Session { gap_ms: 10 },
        0,
        Trigger::default(),
    );
    let mut out = Out::default();
    op.on_record(&1, EventTime(0), &(), &mut out);
    op.on_record(&1, EventTime(15), &(), &mut out);
    assert_eq!(op.open_panes(), 2);
    op.on_record(&1, EventTime(8), &(), &mut out); // [8,18) overlaps both
    assert_eq!(op.open_panes(), 1);
    op.on_watermark(EventTime(25), &mut out);
    assert_eq!(out.fired.len(), 1);
    assert_eq!((out.fired[0].window, out.fired[0].value), (w(0, 25), 3));
}

#[test]
fn snapshot_and_restore_give_the_same_future() {
    let a = WindowAssigner::Session { gap_ms: 7 };
    let mut op = counts(a, 3, Trigger::default());
    let mut out = Out::default();
    for ts in [1, 4, 20, 22, 9] {
        op.on_record(&(ts % 2), EventTime(ts), &(), &mut out);
    }
    let snap = postcard::to_stdvec(&op.snapshot()).expect("encode");
    let mut copy = counts(a, 3, Trigger::default());
    copy.restore(postcard::from_bytes(&snap).expect("decode"));
    let (mut o1, mut o2) = (Out::default(), Out::default());
    for op_out in [(&mut op, &mut o1), (&mut copy, &mut o2)] {
        op_out.0.on_record(&1, EventTime(25), &(), op_out.1);
        op_out.0.on_watermark(EventTime::MAX, op_out.1);
    }
    assert_eq!(o1.fired, o2.fired);
}

/// Out-of-order input within the watermark bound: the streaming operator's final panes
/// equal the batch computation, for every window kind, and nothing is side output.
#[test]
fn out_of_order_windows_equal_the_batch_answer() {
    for assigner in [
        WindowAssigner::Tumbling { size_ms: 100 },
        WindowAssigner::Sliding {
            size_ms: 100,
            slide_ms: 25,
        },
        WindowAssigner::Session { gap_ms: 30 },
    ] {
        for seed in 0..10u64 {
            let mut spec = InputSpec::new(seed, 5_000, 1, 20);
            spec.rate = 10_000; // 10 records per ms
            spec.disorder_ms = 40;
            let records: Vec<(u64, EventTime)> = spec
                .all()
                .map(|(g, ts)| (spec.draw(g, 1) % spec.keys, ts))
                .collect();
            let mut op = counts(assigner, 0, Trigger::default());
            let mut gen = super::time::BoundedOutOfOrderness::new(40);
            let mut out = Out::default();
            for (i, (k, ts)) in records.iter().enumerate() {
                op.on_record(k, *ts, &(), &mut out);
                gen.observe(*ts);
                if i % 97 == 0 {
                    op.on_watermark(gen.watermark(), &mut out);
                }
            }
            op.on_watermark(EventTime::MAX, &mut out);
            assert!(out.late.is_empty(), "{assigner:?} seed {seed}");
            let expected = batch_windows(
                assigner,
                &Count::<()>::new(),
                records.iter().map(|&(k, ts)| (k, ts, ())),
            );
            assert_eq!(
                final_panes(&out.fired),
                expected,
                "{assigner:?} seed {seed}"
            );
            // On-time only: every window fired exactly once.
            assert_eq!(out.fired.len(), expected.len(), "{assigner:?} seed {seed}");
        }
    }
}

fn count_spec(seed: u64, events: u64, partitions: usize, parallelism: usize) -> JobSpec {
    let mut input = InputSpec::new(seed, events, partitions, 50);
    input.rate = 100_000;
    input.disorder_ms = 20;
    JobSpec {
        input,
        parallelism,
        bound_ms: 20,
        allowed_lateness_ms: 0,
        window_ms: 100,
    }
}

fn quick(dir: &std::path::Path) -> ExecConfig {
    let mut cfg = ExecConfig::new(dir);
    cfg.checkpoint_interval = Some(Duration::from_millis(20));
    cfg.batch_size = 64;
    cfg
}

/// The executor's committed output equals the batch answer, each window exactly once.
#[test]
fn executor_output_equals_the_batch_answer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = count_spec(3, 200_000, 3, 2);
    let report = exec::run(&jobs::windowed_counts(&spec, None), &quick(dir.path())).expect("run");
    assert_eq!(report.events, 200_000);
    assert_eq!(report.restarts, 0);
    let expected = jobs::windowed_counts_reference(&spec, &BTreeMap::new());
    let verdict = jobs::verify(dir.path(), &expected).expect("verify");
    assert!(verdict.exact(), "{verdict:?}");
    assert_eq!(verdict.committed_firings, expected.len());
}

/// Tasks fail repeatedly (sources and window tasks in turn); every restart resumes from the
/// latest complete checkpoint and the committed output is still exactly the failure-free
/// answer: no window lost, none duplicated.
#[test]
fn restarts_from_checkpoints_keep_output_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = count_spec(5, 300_000, 2, 3);
    let mut cfg = quick(dir.path());
    cfg.crash_plan = vec![40_000, 25_000, 60_000, 10_000];
    let report = exec::run(&jobs::windowed_counts(&spec, None), &cfg).expect("run");
    assert_eq!(report.restarts, 4);
    assert!(report.events > 300_000, "records were replayed");
    let expected = jobs::windowed_counts_reference(&spec, &BTreeMap::new());
    let verdict = jobs::verify(dir.path(), &expected).expect("verify");
    assert!(verdict.exact(), "{verdict:?}");
    assert_eq!(verdict.committed_firings, expected.len());
}

/// Deliberately late records beyond the allowed lateness appear in the committed side
/// output, and the windows equal the batch answer over the other records.
#[test]
fn late_records_reach_the_committed_side_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = count_spec(9, 100_000, 1, 2);
    spec.allowed_lateness_ms = 50;
    spec.input.late_every = Some(1000);
    spec.input.late_by_ms = 2_000;
    let report = exec::run(&jobs::windowed_counts(&spec, None), &quick(dir.path())).expect("run");
    assert!(report.late > 0);
    let late = jobs::committed_late::<u64, u64>(dir.path()).expect("late");
    let late_total: usize = late.values().sum();
    // Records shifted back by 2 s are late once event time is past 2 s + lateness; the
    // first few are shifted to time 0 while window [0, 100) is still open.
    assert!(late_total >= 80, "only {late_total} late records");
    let shifted: std::collections::BTreeSet<(u64, EventTime)> = spec
        .input
        .all()
        .filter(|(g, _)| g % 1000 == 999)
        .map(|(g, ts)| (spec.input.draw(g, 1) % spec.input.keys, ts))
        .collect();
    assert!(
        late.keys().all(|k| shifted.contains(k)),
        "only shifted records are late"
    );
    let expected = jobs::windowed_counts_reference(&spec, &late);
    let verdict = jobs::verify(dir.path(), &expected).expect("verify");
    assert_eq!(verdict.mismatches, 0, "{verdict:?}");
}

#[test]
fn sessionization_and_yahoo_equal_their_batch_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = count_spec(11, 60_000, 2, 2);
    spec.input.rate = 2_000; // 30 s of event time
    spec.input.keys = 30;
    spec.window_ms = 1_000;
    let job = jobs::sessionize(&spec, None);
    exec::run(&job, &quick(dir.path())).expect("run");
    let verdict = jobs::verify(dir.path(), &jobs::sessionize_reference(&spec)).expect("verify");
    assert!(verdict.exact(), "sessions {verdict:?}");

    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = count_spec(12, 200_000, 2, 2);
    spec.input.keys = 1000;
    spec.window_ms = 10_000;
    spec.input.rate = 10_000; // 20 s of event time
    exec::run(&jobs::yahoo(&spec, None), &quick(dir.path())).expect("run");
    let verdict = jobs::verify(dir.path(), &jobs::yahoo_reference(&spec)).expect("verify");
    assert!(verdict.exact(), "yahoo {verdict:?}");
    assert!(verdict.expected_windows >= 100);
}

/// A run killed between checkpoints resumes from the latest complete one when started again
/// on the same directory (here: a run cut short by a failure budget of zero).
#[test]
fn a_stopped_run_resumes_from_its_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = count_spec(13, 200_000, 2, 2);
    spec.input.paced = true; // 200k records/s of wall time: the failure comes after 0.6 s
    spec.input.rate = 200_000;
    let mut cfg = quick(dir.path());
    cfg.max_restarts = 0;
    cfg.crash_plan = vec![120_000];
    let err = exec::run(
        &jobs::windowed_counts(&spec, Some(std::time::Instant::now())),
        &cfg,
    );
    assert!(err.is_err());
    let resumed = exec::latest_complete(dir.path()).expect("latest");
    assert!(
        resumed.is_some(),
        "a checkpoint completed before the failure"
    );
    cfg.crash_plan.clear();
    let origin = Some(std::time::Instant::now() - Duration::from_secs(2));
    let report = exec::run(&jobs::windowed_counts(&spec, origin), &cfg).expect("resume");
    assert!(
        report.events < 200_000,
        "the resumed run skipped checkpointed input"
    );
    let verdict = jobs::verify(
        dir.path(),
        &jobs::windowed_counts_reference(&spec, &BTreeMap::new()),
    )
    .expect("verify");
    assert!(verdict.exact(), "{verdict:?}");
}
