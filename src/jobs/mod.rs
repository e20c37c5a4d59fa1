//! Every job kind this build knows. One file a kind, each implementing
//! `runner::Job` by calling into its feature module, and one line a kind in
//! `registry()`. The runner schedules, claims and runs whatever is registered.

mod audit_anchor;
mod backup_create;
mod backup_prune;
mod backup_rpo_check;
mod backup_verify;
mod breach_tick;
mod dsr_process;
mod dsr_sla_report;
mod keys_reencrypt;
mod keys_rotate;
mod mail_flush;
mod org_purge;
mod retention_purge;
mod runner_prune;
#[cfg(feature = "testing")]
mod test_sleep;

use std::path::Path;

use crate::config::Config;
use crate::error::Result;
use crate::runner::{Job, Registry};

/// The kinds, in the order `lethe demo` runs them.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.register::<retention_purge::RetentionPurge>();
    r.register::<backup_create::BackupCreate>();
    r.register::<backup_verify::BackupVerify>();
    r.register::<backup_prune::BackupPrune>();
    r.register::<backup_rpo_check::BackupRpoCheck>();
    r.register::<dsr_process::DsrProcess>();
    r.register::<dsr_sla_report::DsrSlaReport>();
    r.register::<org_purge::OrgPurge>();
    r.register::<keys_rotate::KeysRotate>();
    r.register::<keys_reencrypt::KeysReencrypt>();
    r.register::<breach_tick::BreachTick>();
    r.register::<runner_prune::RunnerPrune>();
    r.register::<mail_flush::MailFlush>();
    r.register::<audit_anchor::AuditAnchor>();
    r.follow_up(
        &[
            retention_purge::RetentionPurge::KIND,
            backup_create::BackupCreate::KIND,
            dsr_process::DsrProcess::KIND,
            org_purge::OrgPurge::KIND,
        ],
        audit_anchor::AuditAnchor::KIND,
        audit_anchor::anchor_after,
    );
    // Test builds only: a release binary rejects `test.sleep` as an unknown kind.
    #[cfg(feature = "testing")]
    r.register_unlisted::<test_sleep::TestSleep>();
    r
}

/// `Config::load` plus every job's kind and params checked against `registry()`:
/// what every command that reads the config calls, so a typo fails at load.
pub fn load_config(path: &Path) -> Result<Config> {
    let config = Config::load(path)?;
    registry().check_config(&config)?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numeric_and_duration_params_are_range_checked() {
        let r = registry();
        let purge = |p| r.validate("retention.purge", &p);
        assert!(purge(json!({"batch_size": 5000})).is_ok());
        for bad in [
            json!({"batch_size": 0}),
            json!({"batch_size": 10_000_001}),
            json!({"pause_ms": 3_600_001u64}),
            json!({"max_transaction_ms": u64::MAX}),
        ] {
            let e = purge(bad.clone()).unwrap_err();
            assert!(e.contains("must be between"), "{bad}: {e}");
        }
        let e = purge(json!({"batch_size": 0})).unwrap_err();
        assert_eq!(e, "batch_size must be between 1 and 10000000 (got 0)");
        assert!(r
            .validate("runner.prune", &json!({"keep": "36500d"}))
            .is_ok());
        let e = r
            .validate("runner.prune", &json!({"keep": "99999999999w"}))
            .unwrap_err();
        assert!(e.contains("keep:") && e.contains("36500d"), "{e}");
        let e = r
            .validate("breach.tick", &json!({"reminders": ["6h", "36501d"]}))
            .unwrap_err();
        assert!(e.contains("reminders:"), "{e}");
        let e = r
            .validate("backup.rpo_check", &json!({"rpo": "1 hour"}))
            .unwrap_err();
        assert!(e.starts_with("rpo: "), "{e}");
        let e = r.validate("dsr.process", &json!({"limit": 0})).unwrap_err();
        assert!(e.contains("limit must be between 1 and 1000000"), "{e}");
        let e = r
            .validate("mail.flush", &json!({"batch_size": 0}))
            .unwrap_err();
        assert!(e.contains("batch_size must be between"), "{e}");
    }

    #[test]
    fn unknown_fields_and_kinds_are_refused() {
        let r = registry();
        let e = r
            .validate("runner.prune", &json!({"kepe": "30d"}))
            .unwrap_err();
        assert!(e.starts_with("unknown field `kepe`"), "{e}");
        let e = r.validate("retention.bogus", &json!({})).unwrap_err();
        assert!(
            e.starts_with(
                "unknown job kind `retention.bogus`; this build knows: retention.purge, "
            ),
            "{e}"
        );
        assert!(!e.contains("test.sleep"), "{e}");
    }

    #[test]
    fn kinds_are_listed_in_demo_order_and_test_sleep_only_in_test_builds() {
        let r = registry();
        let kinds: Vec<&str> = r.kinds().collect();
        assert_eq!(
            kinds,
            [
                "retention.purge",
                "backup.create",
                "backup.verify",
                "backup.prune",
                "backup.rpo_check",
                "dsr.process",
                "dsr.sla_report",
                "org.purge",
                "keys.rotate",
                "keys.reencrypt",
                "breach.tick",
                "runner.prune",
                "mail.flush",
                "audit.anchor",
            ]
        );
        let sleep = r.kind("test.sleep");
        if cfg!(feature = "testing") {
            assert_eq!(sleep, Ok("test.sleep"));
        } else {
            let e = sleep.unwrap_err();
            assert!(
                e.starts_with("unknown job kind `test.sleep`; this build knows: "),
                "{e}"
            );
        }
    }
}
