//! Environment variables that switch experiments on for A/B runs of one binary
//! (docs/etcdperf.md): every knob is off or at its default unless set.

/// Whether `name` is set to `1`.
pub fn flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1")
}

/// `name` as a number, if set; a value that does not parse is ignored with a warning on
/// stderr, so a mistyped experiment does not pass for the default silently.
pub fn number<T: std::str::FromStr>(name: &str) -> Option<T> {
    let value = std::env::var(name).ok()?;
    match value.parse() {
        Ok(v) => Some(v),
        Err(_) => {
            eprintln!("warning: {name}={value:?} is not a number; ignored");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    // Each test uses its own variable: tests run in parallel threads of one process.
    #[test]
    fn a_knob_is_off_unless_set_to_one_and_a_bad_number_is_ignored() {
        assert!(!super::flag("SYNOD_TEST_KNOB_FLAG"));
        std::env::set_var("SYNOD_TEST_KNOB_FLAG", "yes");
        assert!(!super::flag("SYNOD_TEST_KNOB_FLAG"));
        std::env::set_var("SYNOD_TEST_KNOB_FLAG", "1");
        assert!(super::flag("SYNOD_TEST_KNOB_FLAG"));

        assert_eq!(super::number::<u64>("SYNOD_TEST_KNOB_NUMBER"), None);
        std::env::set_var("SYNOD_TEST_KNOB_NUMBER", "15O");
        assert_eq!(super::number::<u64>("SYNOD_TEST_KNOB_NUMBER"), None);
        std::env::set_var("SYNOD_TEST_KNOB_NUMBER", "150");
        assert_eq!(super::number::<u64>("SYNOD_TEST_KNOB_NUMBER"), Some(150));
    }
}
