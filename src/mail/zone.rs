//! Dates as a person reads them: in the reader's zone (`mail.timezone`), with
//! UTC alongside so two readers in different zones agree on the instant.

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;

#[derive(Debug, Clone, Copy)]
pub struct Zone(pub Tz);

impl Zone {
    pub const UTC: Zone = Zone(chrono_tz::UTC);

    /// "Tue 1 Dec 2026, 16:00 WIB (09:00 UTC)"; UTC alone when the zone is UTC.
    pub fn show(&self, t: DateTime<Utc>) -> String {
        let utc = t.format("%a %-d %b %Y, %H:%M UTC").to_string();
        if self.0 == chrono_tz::UTC {
            return utc;
        }
        let local = t.with_timezone(&self.0);
        let same_day = local.date_naive() == t.date_naive();
        let utc_part = if same_day {
            t.format("%H:%M UTC").to_string()
        } else {
            utc
        };
        // Zones without a common abbreviation print a bare offset ("-03"): say it is one.
        let abbr = local.format("%Z").to_string();
        let label = if abbr.chars().all(|c| c.is_ascii_alphabetic()) {
            abbr
        } else {
            local.format("UTC%:z").to_string()
        };
        format!(
            "{} {label} ({utc_part})",
            local.format("%a %-d %b %Y, %H:%M")
        )
    }

    /// The calendar date in this zone, ISO 8601.
    pub fn date(&self, t: DateTime<Utc>) -> String {
        t.with_timezone(&self.0).format("%Y-%m-%d").to_string()
    }
}

/// "2 d 5 h", "5 h 10 min", "40 min": how long until (or since) a deadline.
pub fn span(d: Duration) -> String {
    let m = d.num_minutes().abs();
    let (days, hours, mins) = (m / 1440, (m % 1440) / 60, m % 60);
    match (days, hours) {
        (0, 0) => format!("{mins} min"),
        (0, h) => format!("{h} h {mins} min"),
        (d, h) => format!("{d} d {h} h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn local_time_carries_utc_alongside() {
        let t = Utc.with_ymd_and_hms(2026, 12, 1, 9, 0, 0).unwrap();
        assert_eq!(Zone::UTC.show(t), "Tue 1 Dec 2026, 09:00 UTC");
        assert_eq!(
            Zone(chrono_tz::Asia::Jakarta).show(t),
            "Tue 1 Dec 2026, 16:00 WIB (09:00 UTC)"
        );
        // Across midnight the UTC side names its own day.
        let late = Utc.with_ymd_and_hms(2026, 12, 1, 20, 30, 0).unwrap();
        assert_eq!(
            Zone(chrono_tz::Asia::Jakarta).show(late),
            "Wed 2 Dec 2026, 03:30 WIB (Tue 1 Dec 2026, 20:30 UTC)"
        );
        assert_eq!(Zone(chrono_tz::Asia::Jakarta).date(late), "2026-12-02");
        assert_eq!(
            Zone(chrono_tz::America::Sao_Paulo).show(t),
            "Tue 1 Dec 2026, 06:00 UTC-03:00 (09:00 UTC)"
        );
        assert_eq!(
            Zone(chrono_tz::Asia::Kolkata).show(t),
            "Tue 1 Dec 2026, 14:30 IST (09:00 UTC)"
        );
        // Across a DST change the offset follows the date shown.
        let summer = Utc.with_ymd_and_hms(2026, 7, 1, 9, 0, 0).unwrap();
        assert_eq!(
            Zone(chrono_tz::Europe::Berlin).show(summer),
            "Wed 1 Jul 2026, 11:00 CEST (09:00 UTC)"
        );
    }

    #[test]
    fn spans_read_naturally() {
        assert_eq!(span(Duration::minutes(40)), "40 min");
        assert_eq!(span(Duration::minutes(310)), "5 h 10 min");
        assert_eq!(span(Duration::hours(53)), "2 d 5 h");
        assert_eq!(span(Duration::hours(-53)), "2 d 5 h");
    }
}
