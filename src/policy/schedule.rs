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
    ///
    /// Defined through `next_fire`, so both agree on every instant, including
    /// around DST changes (see `next_fire` for the rule).
    pub fn latest_fire(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let now = whole_second(now);
        let mut probe = now;
        // A few steps back at most: each candidate that the forward rule
        // places after `now` (a skipped or repeated local time) is passed over.
        for _ in 0..8 {
            let p = self
                .cron
                .find_previous_occurrence(&probe.with_timezone(&self.tz), true)
                .ok()?
                .with_timezone(&Utc);
            match self.next_fire(p - chrono::Duration::seconds(1)) {
                Some(q) if q <= now => return Some(q),
                _ => probe = p - chrono::Duration::seconds(1),
            }
        }
        None
    }

    /// The first fire strictly after `t`. DST rule: a local time that a
    /// spring-forward skips fires at the next valid instant (02:30 on a
    /// 02:00→03:00 night fires at 03:00); a local time that a fall-back
    /// repeats fires once, at its first occurrence (so an hourly job in a
    /// zone with DST skips the repeated hour's second pass: keep such jobs
    /// in UTC, the default, for a strict rhythm).
    pub fn next_fire(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut from = whole_second(t).with_timezone(&self.tz);
        for _ in 0..4 {
            let q = self.cron.find_next_occurrence(&from, false).ok()?;
            if !is_second_pass(&q) {
                return Some(q.with_timezone(&Utc));
            }
            from = q;
        }
        None
    }
}

/// Whether `t` is the later of two instants with the same local time (the
/// repeated hour of a fall-back).
fn is_second_pass(t: &DateTime<Tz>) -> bool {
    use chrono::{LocalResult, TimeZone};
    match t.timezone().from_local_datetime(&t.naive_local()) {
        LocalResult::Ambiguous(first, _) => first != *t,
        _ => false,
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

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// Every second of `[from, to)`: `latest_fire` moves exactly at the
    /// instants `next_fire` announces, so the enqueuer (latest) and `jobs
    /// list` (next) never disagree.
    fn fires_between(s: &Schedule, from: &str, to: &str) -> Vec<DateTime<Utc>> {
        let (from, to) = (utc(from), utc(to));
        let mut fires = Vec::new();
        let mut announced = s.next_fire(from - chrono::Duration::seconds(1));
        let mut t = from;
        while t < to {
            let latest = s.latest_fire(t);
            if announced == Some(t) {
                assert_eq!(
                    latest,
                    Some(t),
                    "announced fire {t} is not the latest at {t}"
                );
                fires.push(t);
                announced = s.next_fire(t);
            } else {
                assert!(latest.is_some_and(|l| l < t), "latest {latest:?} at {t}");
            }
            t += chrono::Duration::seconds(1);
        }
        fires
    }

    #[test]
    fn spring_forward_fires_at_the_next_valid_instant_in_two_zones() {
        for (tz, day, start, end, expect) in [
            (
                chrono_tz::Europe::Berlin,
                "0 30 2 * * *",
                "2026-03-29T00:00:00Z",
                "2026-03-29T02:00:00Z",
                "2026-03-29T01:00:00Z",
            ),
            (
                chrono_tz::America::New_York,
                "0 30 2 * * *",
                "2026-03-08T06:00:00Z",
                "2026-03-08T08:00:00Z",
                "2026-03-08T07:00:00Z",
            ),
        ] {
            let s = Schedule::parse(day, tz).unwrap();
            assert_eq!(fires_between(&s, start, end), vec![utc(expect)], "{tz}");
        }
    }

    #[test]
    fn fall_back_fires_a_repeated_local_time_once_in_two_zones() {
        for (tz, start, end, expect) in [
            (
                chrono_tz::Europe::Berlin,
                "2026-10-24T23:00:00Z",
                "2026-10-25T03:00:00Z",
                "2026-10-25T00:30:00Z",
            ),
            (
                chrono_tz::America::New_York,
                "2026-11-01T04:00:00Z",
                "2026-11-01T08:00:00Z",
                "2026-11-01T05:30:00Z",
            ),
        ] {
            let s = Schedule::parse("0 30 1-2 * * *", tz).unwrap();
            let fires = fires_between(&s, start, end);
            let local: Vec<String> = fires
                .iter()
                .map(|f| f.with_timezone(&tz).format("%H:%M").to_string())
                .collect();
            assert!(fires.contains(&utc(expect)), "{tz}: {fires:?}");
            let mut dedup = local.clone();
            dedup.dedup();
            assert_eq!(local, dedup, "{tz}: a local time fired twice: {fires:?}");
        }
        // Hourly in Berlin: 02:00 local fires once, so the repeated hour's second pass is skipped.
        let hourly = Schedule::parse("0 0 * * * *", chrono_tz::Europe::Berlin).unwrap();
        let fires = fires_between(&hourly, "2026-10-24T22:30:00Z", "2026-10-25T03:30:00Z");
        let want = [
            "2026-10-24T23:00:00Z",
            "2026-10-25T00:00:00Z",
            "2026-10-25T02:00:00Z",
            "2026-10-25T03:00:00Z",
        ];
        assert_eq!(fires, want.map(utc).to_vec());
    }

    #[test]
    fn five_fields_are_rejected_with_a_hint() {
        let err = Schedule::parse("0 3 * * *", chrono_tz::UTC).unwrap_err();
        assert!(err.contains("six fields"), "{err}");
    }
}
