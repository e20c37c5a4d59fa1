//! Human durations in config: `500ms`, `30s`, `5m`, `1h`, `7d`, `2w`.

use std::time::Duration;

/// The longest duration any setting accepts: 36500d (100 years). Lethe adds
/// and subtracts durations to and from timestamps (deadlines, leases, cutoffs);
/// within this bound every such sum stays far inside chrono's range, so no
/// setting can make a job panic at run time.
pub const MAX_DURATION: Duration = Duration::from_secs(36_500 * 86_400);

/// Parses a duration between 0 and [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    parse_bounded(text)?.ok_or_else(|| {
        format!(
            "`{text}` is too long: durations go from 0s to {} (100 years)",
            format_duration(MAX_DURATION)
        )
    })
}

/// `Ok(None)`: well-formed but longer than [`MAX_DURATION`] (the caller names its range).
pub(crate) fn parse_bounded(text: &str) -> Result<Option<Duration>, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` has no unit; write e.g. `30s`, `5m`, `1h`, `7d`"))?;
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "`{text}` does not start with a whole number; write e.g. `30s`"
        ));
    }
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 604_800_000,
        _ => {
            return Err(format!(
                "`{text}` has unknown unit `{unit}`; use ms, s, m, h, d or w"
            ))
        }
    };
    // All digits: a parse failure is an overflow of u64, i.e. too long.
    Ok(num
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_ms))
        .map(Duration::from_millis)
        .filter(|d| *d <= MAX_DURATION))
}

pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    if d.is_zero() {
        return "0s".into();
    }
    if d.subsec_millis() != 0 || s == 0 {
        return format!("{}ms", d.as_millis());
    }
    for (unit, size) in [("w", 604_800), ("d", 86_400), ("h", 3600), ("m", 60)] {
        if s % size == 0 {
            return format!("{}{unit}", s / size);
        }
    }
    format!("{s}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604_800));
        assert_eq!(parse_duration("1w").unwrap(), Duration::from_secs(604_800));
    }

    #[test]
    fn rejects_bad_input_with_reason() {
        assert!(parse_duration("30").unwrap_err().contains("no unit"));
        assert!(parse_duration("3x").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("s").unwrap_err().contains("whole number"));
        assert!(parse_duration("99999999999999999w")
            .unwrap_err()
            .contains("too long"));
    }

    #[test]
    fn the_limit_is_inclusive_in_every_unit() {
        assert_eq!(parse_duration("36500d").unwrap(), MAX_DURATION);
        assert_eq!(parse_duration("3153600000s").unwrap(), MAX_DURATION);
        assert_eq!(parse_duration("3153600000000ms").unwrap(), MAX_DURATION);
        for over in [
            "36501d",
            "5215w",
            "3153600001s",
            "3153600000001ms",
            "99999999999w",
            "20000000000000000000ms",
        ] {
            let e = parse_duration(over).unwrap_err();
            assert!(e.contains("0s to 36500d"), "{over}: {e}");
        }
        let now = chrono::Utc::now();
        let max = chrono::Duration::from_std(MAX_DURATION).unwrap();
        assert!(now.checked_add_signed(max * 3).is_some());
        assert!(now.checked_sub_signed(max * 3).is_some());
    }

    #[test]
    fn formats_round_trip() {
        for s in ["500ms", "30s", "5m", "2h", "3d", "1w"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
    }
}
