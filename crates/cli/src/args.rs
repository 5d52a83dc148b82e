//! Parsers for flag values, with error messages that say what was expected.

use std::time::Duration;

/// A duration such as `200ms`, `1.5s`, `2m` or `50us`.
pub(crate) fn duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number.parse().map_err(|_| {
        format!("`{s}` is not a duration: expected a number and a unit, like 200ms")
    })?;
    let scale = match unit.trim() {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "" => return Err(format!("`{s}` needs a unit: ns, us, ms, s, m or h")),
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{s}`: use ns, us, ms, s, m or h"
            ))
        }
    };
    let secs = value * scale;
    if !secs.is_finite() || secs > 1e9 {
        return Err(format!("`{s}` is too long"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A clock rate error such as `50ppm` (a bare number is taken as ppm).
pub(crate) fn ppm(s: &str) -> Result<f64, String> {
    let number = s.trim().trim_end_matches("ppm").trim();
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a drift: expected parts per million, like 50ppm"))?;
    if !(0.0..=100_000.0).contains(&value) {
        return Err(format!("drift `{s}` must be between 0 and 100000ppm"));
    }
    Ok(value)
}

/// A probability between 0 and 1.
pub(crate) fn probability(s: &str) -> Result<f64, String> {
    let value: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a probability: expected a number from 0 to 1"))?;
    if !(0.0..=1.0).contains(&value) {
        return Err(format!("probability `{s}` must be between 0 and 1"));
    }
    Ok(value)
}

/// A node count from 1 to 4096.
pub(crate) fn nodes(s: &str) -> Result<u32, String> {
    let value: u32 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a node count: expected a whole number"))?;
    if !(1..=4096).contains(&value) {
        return Err(format!("node count `{s}` must be between 1 and 4096"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_reject_garbage() {
        assert_eq!(duration("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(duration("50us"), Ok(Duration::from_micros(50)));
        assert!(duration("200").unwrap_err().contains("needs a unit"));
        assert!(duration("fast").unwrap_err().contains("not a duration"));
        assert!(duration("3parsecs").unwrap_err().contains("unknown unit"));
        assert!(duration("1e99s").is_err());
    }

    #[test]
    fn drift_and_probability_are_bounded() {
        assert_eq!(ppm("50ppm"), Ok(50.0));
        assert_eq!(ppm("7"), Ok(7.0));
        assert!(ppm("-3ppm").is_err());
        assert!(ppm("lots").is_err());
        assert_eq!(probability("0.25"), Ok(0.25));
        assert!(probability("1.5").is_err());
        assert!(nodes("0").is_err());
        assert!(nodes("five").is_err());
    }
}
