//! Retention periods as the seeds write them: `30d`, `12w`, `6mo`, `7y`, and
//! relative ones such as `org_closed+1y`. Months and years are calendar
//! arithmetic: 31 March minus one month is 28 (or 29) February.

use std::fmt;

use chrono::{DateTime, Days, Months, Utc};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Days(u32),
    Months(u32),
}

impl Period {
    pub fn parse(text: &str) -> Result<Period, String> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(|| {
            format!("`{text}` has no unit; write e.g. `90d`, `12w`, `6mo` or `7y`")
        })?;
        let (num, unit) = t.split_at(split);
        let n: u32 = num
            .parse()
            .map_err(|_| format!("`{text}` must start with a whole number, e.g. `90d`"))?;
        if n == 0 {
            return Err(format!(
                "`{text}` is zero; use `none` to keep data forever or a positive period"
            ));
        }
        let too_long = || format!("`{text}` is longer than 200 years");
        match unit {
            "d" if n <= 73_000 => Ok(Period::Days(n)),
            "w" if n <= 10_400 => Ok(Period::Days(n * 7)),
            "mo" if n <= 2_400 => Ok(Period::Months(n)),
            "y" if n <= 200 => Ok(Period::Months(n * 12)),
            "d" | "w" | "mo" | "y" => Err(too_long()),
            _ => Err(format!("`{text}` has unknown unit `{unit}`; use d (days), w (weeks), mo (months) or y (years)")),
        }
    }

    /// `t` minus this period; `None` only for dates before the calendar's start.
    pub fn before(self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Period::Days(d) => t.checked_sub_days(Days::new(u64::from(d))),
            Period::Months(m) => t.checked_sub_months(Months::new(m)),
        }
    }

    /// `t` plus this period (for deadlines).
    pub fn after(self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Period::Days(d) => t.checked_add_days(Days::new(u64::from(d))),
            Period::Months(m) => t.checked_add_months(Months::new(m)),
        }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Period::Days(d) if d % 7 == 0 && d >= 7 => write!(f, "{}w", d / 7),
            Period::Days(d) => write!(f, "{d}d"),
            Period::Months(m) if m % 12 == 0 => write!(f, "{}y", m / 12),
            Period::Months(m) => write!(f, "{m}mo"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetentionRule {
    /// Rows older than the period (by the entry's timestamp column).
    Age(Period),
    /// All rows of orgs closed longer ago than the period.
    OrgClosed(Period),
}

impl RetentionRule {
    /// Parses one rule; `Ok(None)` for `none`/`forever` (keep).
    pub fn parse(text: &str) -> Result<Option<RetentionRule>, String> {
        let t = text.trim();
        if t.eq_ignore_ascii_case("none") || t.eq_ignore_ascii_case("forever") {
            return Ok(None);
        }
        if let Some(rest) = t.strip_prefix("org_closed") {
            let p = rest.trim_start().strip_prefix('+').ok_or_else(|| {
                format!("`{text}`: write `org_closed+PERIOD`, e.g. `org_closed+1y`")
            })?;
            return Ok(Some(RetentionRule::OrgClosed(Period::parse(p)?)));
        }
        Period::parse(t).map(|p| Some(RetentionRule::Age(p)))
    }

    pub fn period(self) -> Period {
        match self {
            RetentionRule::Age(p) | RetentionRule::OrgClosed(p) => p,
        }
    }
}

impl fmt::Display for RetentionRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetentionRule::Age(p) => write!(f, "{p}"),
            RetentionRule::OrgClosed(p) => write!(f, "org_closed+{p}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, m: u32, d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, 12, 0, 0).unwrap()
    }

    #[test]
    fn parses_the_forms_the_seeds_use() {
        assert_eq!(
            RetentionRule::parse("90d").unwrap(),
            Some(RetentionRule::Age(Period::Days(90)))
        );
        assert_eq!(
            RetentionRule::parse("12w").unwrap(),
            Some(RetentionRule::Age(Period::Days(84)))
        );
        assert_eq!(
            RetentionRule::parse("6mo").unwrap(),
            Some(RetentionRule::Age(Period::Months(6)))
        );
        assert_eq!(
            RetentionRule::parse("7y").unwrap(),
            Some(RetentionRule::Age(Period::Months(84)))
        );
        assert_eq!(
            RetentionRule::parse("org_closed+1y").unwrap(),
            Some(RetentionRule::OrgClosed(Period::Months(12)))
        );
        assert_eq!(RetentionRule::parse("none").unwrap(), None);
    }

    #[test]
    fn rejects_bad_periods_with_a_fix() {
        for (input, hint) in [
            ("90", "no unit"),
            ("90 days", "unknown unit"),
            ("0d", "zero"),
            ("org_closed1y", "org_closed+PERIOD"),
            ("x1d", "whole number"),
            ("500y", "200 years"),
        ] {
            let e = RetentionRule::parse(input).unwrap_err();
            assert!(e.contains(hint), "{input}: {e}");
        }
    }

    #[test]
    fn calendar_months_clamp_to_month_end() {
        // Snapshot table: (now, period, cutoff).
        let cases = [
            (at(2026, 3, 31), "1mo", at(2026, 2, 28)),
            (at(2028, 3, 31), "1mo", at(2028, 2, 29)),
            (at(2026, 2, 28), "1y", at(2025, 2, 28)),
            (at(2028, 2, 29), "1y", at(2027, 2, 28)),
            (at(2026, 1, 10), "90d", at(2025, 10, 12)),
            (at(2026, 1, 10), "7y", at(2019, 1, 10)),
        ];
        for (now, p, want) in cases {
            assert_eq!(
                Period::parse(p).unwrap().before(now),
                Some(want),
                "{now} - {p}"
            );
        }
        assert_eq!(
            Period::parse("1mo").unwrap().after(at(2026, 1, 31)),
            Some(at(2026, 2, 28))
        );
    }

    #[test]
    fn display_round_trips() {
        for s in ["90d", "2w", "6mo", "7y", "org_closed+1y"] {
            assert_eq!(RetentionRule::parse(s).unwrap().unwrap().to_string(), s);
        }
    }
}
