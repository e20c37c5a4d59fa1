//! When a closed org's keys may be crypto-shredded. Shredding makes every
//! encrypted value of the org unreadable, in the database and in every
//! backup, so it waits for more than `keys.shred_after`: not while a legal
//! hold covers the org, and not before the longest `org_closed+P` retention
//! of the org's data classes has run (the policy still keeps those rows).

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::config::Config;
use crate::error::Result;
use crate::policy::RetentionRule;
use crate::store::{HoldScope, LegalHold, OrgKek, Store};

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Gate {
    /// `keys.shred_after` has not passed since the closure.
    NotDue,
    Shred,
    /// Due by `keys.shred_after`, but a rule keeps the keys.
    Postponed(Postponement),
}

#[derive(Debug, PartialEq, Eq)]
pub(super) struct Postponement {
    /// The rule, as evidence and `keys status` name it.
    pub reason: String,
    /// When the rule lets go (`None`: while a hold stands).
    pub until: Option<DateTime<Utc>>,
}

pub(super) fn gate(
    config: &Config,
    holds: &[LegalHold],
    org: &str,
    closed_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Gate {
    let after = chrono::Duration::from_std(config.keys.shred_after)
        .ok()
        .and_then(|d| closed_at.checked_add_signed(d));
    if after.is_none_or(|t| t > now) {
        return Gate::NotDue;
    }
    if let Some(h) = holds
        .iter()
        .find(|h| h.scope == HoldScope::Org && h.value == org && h.released_at.is_none())
    {
        return Gate::Postponed(Postponement {
            reason: format!("legal hold {} on the org", h.id),
            until: None,
        });
    }
    let longest = config
        .data_map
        .iter()
        .filter(|e| e.org.is_some())
        .flat_map(|e| e.retention.iter().map(move |r| (e, r)))
        .filter_map(|(e, r)| match r {
            RetentionRule::OrgClosed(p) => p.after(closed_at).map(|t| (t, e, *r)),
            RetentionRule::Age(_) => None,
        })
        .max_by_key(|(t, _, _)| *t);
    match longest {
        Some((until, e, rule)) if until > now => Gate::Postponed(Postponement {
            reason: format!(
                "class {} keeps the org's data until {rule} ({})",
                e.class, e.table
            ),
            until: Some(until),
        }),
        _ => Gate::Shred,
    }
}

/// Records a postponement on the org's key, with evidence, when its reason
/// differs from the one recorded last (not on every run).
pub(super) async fn record(
    store: &dyn Store,
    kek: &mut OrgKek,
    why: &Postponement,
    actor: &str,
) -> Result<()> {
    if kek.shred_postponed.as_deref() == Some(why.reason.as_str()) {
        return Ok(());
    }
    kek.shred_postponed = Some(why.reason.clone());
    let event = crate::store::evidence(
        actor,
        "keys.shred_postponed",
        &format!("org:{}", kek.org),
        json!({"reason": why.reason, "until": why.until.map(|t| t.to_rfc3339())}),
    );
    store.kek_put(kek, Some(&event)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn config(rules: &str) -> Config {
        let text = format!(
            "[database]\nurl = \"sqlite://app.db\"\n[mail]\nfrom = \"l@x.example\"\ntransport = \"file\"\ndir = \"mail\"\n\
             [app]\nsubjects = {{ table = \"users\", id = \"id\", email = \"email\" }}\n\
             orgs = {{ table = \"orgs\", id = \"id\", closed_at = \"closed_at\" }}\n\
             [keys]\nshred_after = \"30d\"\n\
             [[data_map]]\ntable = \"audit_log\"\nclass = \"audit\"\norg = \"org_id\"\ntimestamp = \"at\"\nretention = {rules}\n"
        );
        Config::from_text(std::path::Path::new("lethe.toml"), &text).unwrap()
    }

    fn hold(org: &str, released: bool) -> LegalHold {
        LegalHold {
            id: 7,
            scope: HoldScope::Org,
            value: org.into(),
            reason: "litigation".into(),
            created_by: "cli:test".into(),
            created_at: Utc::now(),
            released_at: released.then(Utc::now),
            released_by: None,
            release_reason: None,
        }
    }

    /// Closed 1 January 2026; each row: days since closure, rules, holds, and
    /// the gate (reason text abbreviated to its rule).
    #[test]
    fn the_gate_by_days_since_closure_rules_and_holds() {
        let closed = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let at = |days: i64| closed + chrono::Duration::days(days);
        let table: [(i64, &str, Vec<LegalHold>, &str); 8] = [
            (10, "\"90d\"", vec![], "not due"),
            (40, "\"90d\"", vec![], "shred"),
            (40, "\"90d\"", vec![hold("3", false)], "legal hold 7"),
            (40, "\"90d\"", vec![hold("3", true)], "shred"),
            (40, "\"90d\"", vec![hold("4", false)], "shred"),
            (40, "[\"90d\", \"org_closed+1y\"]", vec![], "org_closed+1y"),
            (366, "[\"90d\", \"org_closed+1y\"]", vec![], "shred"),
            (
                40,
                "[\"org_closed+1y\", \"org_closed+2y\"]",
                vec![hold("3", false)],
                "legal hold 7",
            ),
        ];
        for (days, rules, holds, want) in table {
            let got = match gate(&config(rules), &holds, "3", closed, at(days)) {
                Gate::NotDue => "not due".to_string(),
                Gate::Shred => "shred".to_string(),
                Gate::Postponed(p) => p.reason,
            };
            assert!(got.contains(want), "day {days}, {rules}: {got}");
        }
        // The longest of several org_closed rules, with its end date.
        match gate(
            &config("[\"org_closed+1y\", \"org_closed+2y\"]"),
            &[],
            "3",
            closed,
            at(400),
        ) {
            Gate::Postponed(p) => {
                assert!(p.reason.contains("org_closed+2y"), "{}", p.reason);
                assert_eq!(
                    p.until,
                    Some(Utc.with_ymd_and_hms(2028, 1, 1, 0, 0, 0).unwrap())
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
