//! Grandfather-father-son retention for backups: keep the newest `last`, then
//! the newest backup of each of the latest N hours, days, ISO weeks, months
//! and years; never the newest verified backup. Tested with a table of cases
//! as rustic tests `forget`.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Datelike, Timelike, Utc};

use crate::config::KeepPolicy;

#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: String,
    pub created_at: DateTime<Utc>,
    pub verified: bool,
}

/// Why a backup is kept (all reasons that apply), or empty: it goes.
pub fn decide(backups: &[Candidate], keep: &KeepPolicy) -> BTreeMap<String, Vec<&'static str>> {
    let mut sorted: Vec<&Candidate> = backups.iter().collect();
    sorted.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
    let mut reasons: BTreeMap<String, Vec<&'static str>> =
        sorted.iter().map(|b| (b.id.clone(), vec![])).collect();

    for b in sorted.iter().take(keep.last as usize) {
        reasons.entry(b.id.clone()).or_default().push("last");
    }
    type Bucket = fn(&DateTime<Utc>) -> (i32, u32, u32, u32);
    let buckets: [(&'static str, u32, Bucket); 5] = [
        ("hourly", keep.hourly, |t| {
            (t.year(), t.ordinal(), t.hour(), 0)
        }),
        ("daily", keep.daily, |t| (t.year(), t.ordinal(), 0, 0)),
        ("weekly", keep.weekly, |t| {
            (t.iso_week().year(), t.iso_week().week(), 0, 0)
        }),
        ("monthly", keep.monthly, |t| (t.year(), t.month(), 0, 0)),
        ("yearly", keep.yearly, |t| (t.year(), 0, 0, 0)),
    ];
    for (name, n, bucket) in buckets {
        let mut seen = HashSet::new();
        for b in &sorted {
            if seen.len() >= n as usize {
                break;
            }
            // Newest first: the first backup met in a bucket is that bucket's keeper.
            if seen.insert(bucket(&b.created_at)) {
                reasons.entry(b.id.clone()).or_default().push(name);
            }
        }
    }
    if let Some(newest_verified) = sorted.iter().find(|b| b.verified) {
        reasons
            .entry(newest_verified.id.clone())
            .or_default()
            .push("newest verified");
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, m: u32, d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, 0, 0).unwrap()
    }

    fn c(id: &str, t: DateTime<Utc>, verified: bool) -> Candidate {
        Candidate {
            id: id.into(),
            created_at: t,
            verified,
        }
    }

    fn policy(
        last: u32,
        hourly: u32,
        daily: u32,
        weekly: u32,
        monthly: u32,
        yearly: u32,
    ) -> KeepPolicy {
        KeepPolicy {
            last,
            hourly,
            daily,
            weekly,
            monthly,
            yearly,
        }
    }

    fn kept(backups: &[Candidate], keep: KeepPolicy) -> Vec<String> {
        let d = decide(backups, &keep);
        let mut v: Vec<String> = d
            .into_iter()
            .filter(|(_, r)| !r.is_empty())
            .map(|(id, _)| id)
            .collect();
        v.sort();
        v
    }

    /// A snapshot table: backups at these times, this policy, these survive.
    #[test]
    fn gfs_cases() {
        // Every 6 hours for 3 days: b11 newest (10 March 18:00) … b00 oldest (8 March 00:00), only b00 verified.
        let series: Vec<Candidate> = (0..12)
            .map(|i| {
                c(
                    &format!("b{:02}", 11 - i),
                    at(2026, 3, 10, 18) - chrono::Duration::hours(6 * i),
                    i == 11,
                )
            })
            .collect();
        let cases: Vec<(&str, KeepPolicy, Vec<&str>)> = vec![
            (
                "keep last 2 (+ newest verified)",
                policy(2, 0, 0, 0, 0, 0),
                vec!["b00", "b10", "b11"],
            ),
            (
                "hourly 3: one per hour, newest three",
                policy(0, 3, 0, 0, 0, 0),
                vec!["b00", "b09", "b10", "b11"],
            ),
            (
                "daily 2: newest of 10 and 9 March",
                policy(0, 0, 2, 0, 0, 0),
                vec!["b00", "b07", "b11"],
            ),
            (
                "weekly 1 and monthly 1 overlap",
                policy(0, 0, 0, 1, 1, 0),
                vec!["b00", "b11"],
            ),
            (
                "nothing but the newest verified",
                policy(0, 0, 0, 0, 0, 0),
                vec!["b00"],
            ),
        ];
        for (name, keep, want) in cases {
            assert_eq!(kept(&series, keep), want, "{name}");
        }
    }

    #[test]
    fn monthly_and_yearly_pick_the_newest_in_each_period() {
        let b = vec![
            c("jan1", at(2025, 1, 1, 0), true),
            c("jan31", at(2025, 1, 31, 0), false),
            c("feb", at(2025, 2, 14, 0), false),
            c("dec24", at(2024, 12, 24, 0), false),
            c("jun23", at(2023, 6, 1, 0), false),
        ];
        assert_eq!(
            kept(&b, policy(0, 0, 0, 0, 2, 0)),
            vec!["feb", "jan1", "jan31"]
        );
        assert_eq!(
            kept(&b, policy(0, 0, 0, 0, 0, 3)),
            vec!["dec24", "feb", "jan1", "jun23"]
        );
    }

    #[test]
    fn iso_weeks_cross_year_boundaries() {
        // 2024-12-30 and 2025-01-02 are both in ISO week 1 of 2025.
        let b = vec![
            c("mon", at(2024, 12, 30, 0), false),
            c("thu", at(2025, 1, 2, 0), false),
        ];
        assert_eq!(kept(&b, policy(0, 0, 0, 1, 0, 0)), vec!["thu"]);
    }

    #[test]
    fn reasons_are_reported() {
        let b = vec![c("a", at(2026, 1, 1, 0), true)];
        let d = decide(&b, &policy(1, 0, 1, 0, 0, 0));
        assert_eq!(d["a"], vec!["last", "daily", "newest verified"]);
    }
}
