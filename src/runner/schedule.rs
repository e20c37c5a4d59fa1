//! Cron schedules with seconds, evaluated in the job's time zone.

use chrono::{DateTime, Timelike, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds};
use croner::Cron;

#[derive(Debug, Clone)]
pub struct Schedule {
    expr: String,
    cron: Cron,
    tz: Tz,
}

impl Schedule {
    pub fn parse(expr: &str, tz: Tz) -> Result<Self, String> {
        let cron = CronParser::builder()
            .seconds(Seconds::Required)
            .build()
            .parse(expr)
            .map_err(|e| {
                format!(
                    "schedule `{expr}` is not a cron expression with seconds ({e}); \
                     write six fields: sec min hour day-of-month month day-of-week, e.g. `0 0 3 * * *`"
                )
            })?;
        Ok(Schedule {
            expr: expr.to_string(),
            cron,
            tz,
        })
    }

    pub fn expr(&self) -> &str {
        &self.expr
    }

    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// The most recent fire at or before `now`, on a whole second: every
    /// replica must compute the same instant, or the queue's unique key would not dedupe.
    pub fn latest_fire(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&whole_second(now).with_timezone(&self.tz), true)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The first fire strictly after `t`.
    pub fn next_fire(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&whole_second(t).with_timezone(&self.tz), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}

fn whole_second(t: DateTime<Utc>) -> DateTime<Utc> {
    t.with_nanosecond(0).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn latest_and_next_fire() {
        let s = Schedule::parse("0 0 3 * * *", chrono_tz::UTC).unwrap();
        let now = Utc.with_ymd_and_hms(2026, 3, 10, 12, 0, 0).unwrap();
        assert_eq!(
            s.latest_fire(now),
            Some(Utc.with_ymd_and_hms(2026, 3, 10, 3, 0, 0).unwrap())
        );
        assert_eq!(
            s.next_fire(now),
            Some(Utc.with_ymd_and_hms(2026, 3, 11, 3, 0, 0).unwrap())
        );
        let at = Utc.with_ymd_and_hms(2026, 3, 10, 3, 0, 0).unwrap();
        assert_eq!(s.latest_fire(at), Some(at), "a fire exactly now counts");
    }

    #[test]
    fn fires_are_whole_seconds_whatever_the_clock_reads() {
        let s = Schedule::parse("* * * * * *", chrono_tz::UTC).unwrap();
        let a = Utc.with_ymd_and_hms(2026, 3, 10, 12, 0, 5).unwrap();
        let now = a + chrono::Duration::milliseconds(730);
        assert_eq!(s.latest_fire(now), Some(a));
        assert_eq!(s.next_fire(now), Some(a + chrono::Duration::seconds(1)));
    }

    #[test]
    fn timezone_shifts_fires() {
        let s = Schedule::parse("0 0 3 * * *", chrono_tz::Europe::Berlin).unwrap();
        let now = Utc.with_ymd_and_hms(2026, 1, 10, 12, 0, 0).unwrap();
        // 03:00 in Berlin in winter is 02:00 UTC.
        assert_eq!(
            s.latest_fire(now),
            Some(Utc.with_ymd_and_hms(2026, 1, 10, 2, 0, 0).unwrap())
        );
    }

    #[test]
    fn five_fields_are_rejected_with_a_hint() {
        let err = Schedule::parse("0 3 * * *", chrono_tz::UTC).unwrap_err();
        assert!(err.contains("six fields"), "{err}");
    }
}
