//! The job kinds this build knows, and the parameters each accepts.

use std::fmt;
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde_json::Value;

/// Set to `1` to enable `test.sleep`, a kind that only the fault tests use.
pub const ENV_TEST_JOBS: &str = "LETHE_ENABLE_TEST_JOBS";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobKind {
    RetentionPurge,
    BackupCreate,
    BackupVerify,
    BackupPrune,
    BackupRpoCheck,
    DsrProcess,
    DsrSlaReport,
    KeysRotate,
    BreachTick,
    MailFlush,
    RunnerPrune,
    /// Sleeps and records that it ran: the runner's fault tests kill processes during it.
    TestSleep,
}

impl JobKind {
    /// Every kind a catalog may name, in the order `demo` runs them.
    pub const ALL: &'static [JobKind] = &[
        JobKind::RetentionPurge,
        JobKind::BackupCreate,
        JobKind::BackupVerify,
        JobKind::BackupPrune,
        JobKind::BackupRpoCheck,
        JobKind::DsrProcess,
        JobKind::DsrSlaReport,
        JobKind::KeysRotate,
        JobKind::BreachTick,
        JobKind::RunnerPrune,
        JobKind::MailFlush,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::RetentionPurge => "retention.purge",
            JobKind::BackupCreate => "backup.create",
            JobKind::BackupVerify => "backup.verify",
            JobKind::BackupPrune => "backup.prune",
            JobKind::BackupRpoCheck => "backup.rpo_check",
            JobKind::DsrProcess => "dsr.process",
            JobKind::DsrSlaReport => "dsr.sla_report",
            JobKind::KeysRotate => "keys.rotate",
            JobKind::BreachTick => "breach.tick",
            JobKind::MailFlush => "mail.flush",
            JobKind::RunnerPrune => "runner.prune",
            JobKind::TestSleep => "test.sleep",
        }
    }

    /// Rejects params the kind does not know, so a typo fails at load, not at 3 a.m.
    pub fn validate_params(self, params: &Value) -> Result<(), String> {
        match self {
            JobKind::RetentionPurge => check::<crate::retention::PurgeParams>(params),
            JobKind::BackupCreate => check::<crate::backup::CreateParams>(params),
            JobKind::BackupVerify => check::<crate::backup::VerifyParams>(params),
            JobKind::BackupPrune => check::<crate::backup::PruneParams>(params),
            JobKind::BackupRpoCheck => check::<crate::backup::RpoParams>(params),
            JobKind::DsrProcess => check::<crate::dsr::ProcessParams>(params),
            JobKind::DsrSlaReport => check::<crate::dsr::ReportParams>(params),
            JobKind::KeysRotate => check::<crate::keys::RotateParams>(params),
            JobKind::BreachTick => check::<crate::breach::TickParams>(params),
            JobKind::MailFlush => check::<crate::notify::FlushParams>(params),
            JobKind::RunnerPrune => check::<super::job_cleaner::PruneParams>(params),
            JobKind::TestSleep => check::<super::dispatch::SleepParams>(params),
        }
    }
}

fn check<T: DeserializeOwned>(params: &Value) -> Result<(), String> {
    serde_json::from_value::<T>(params.clone())
        .map(|_| ())
        .map_err(|e| e.to_string())?;
    check_durations(params)
}

/// Numeric params (whatever the kind) and their allowed ranges: a zero batch
/// would loop forever, a huge pause or timeout would stall a run for years.
const COUNT_PARAMS: &[(&str, u64, u64)] = &[
    ("batch_size", 1, 10_000_000),
    ("max_batch_size", 1, 100_000_000),
    ("target_batch_ms", 1, 3_600_000),
    ("max_transaction_ms", 1, 3_600_000),
    ("pause_ms", 0, 3_600_000),
    ("limit", 1, 1_000_000),
];

/// Params that are durations or counts must parse and be in range at load, not at 3 a.m.
fn check_durations(params: &Value) -> Result<(), String> {
    for (key, min, max) in COUNT_PARAMS {
        let Some(v) = params.get(*key) else { continue };
        if !v.as_u64().is_some_and(|n| (*min..=*max).contains(&n)) {
            return Err(format!("{key} must be between {min} and {max} (got {v})"));
        }
    }
    for key in ["keep", "rpo", "verify_lag", "reminders"] {
        let values = match params.get(key) {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => continue,
        };
        for v in values {
            crate::config::parse_duration(v).map_err(|m| format!("{key}: {m}"))?;
        }
    }
    Ok(())
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(k) = JobKind::ALL.iter().find(|k| k.as_str() == s) {
            return Ok(*k);
        }
        if s == JobKind::TestSleep.as_str() && std::env::var(ENV_TEST_JOBS).as_deref() == Ok("1") {
            return Ok(JobKind::TestSleep);
        }
        let known: Vec<&str> = JobKind::ALL.iter().map(|k| k.as_str()).collect();
        Err(format!(
            "unknown job kind `{s}`; this build knows: {}",
            known.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numeric_and_duration_params_are_range_checked() {
        let purge = JobKind::RetentionPurge;
        assert!(purge.validate_params(&json!({"batch_size": 5000})).is_ok());
        for bad in [
            json!({"batch_size": 0}),
            json!({"batch_size": 10_000_001}),
            json!({"pause_ms": 3_600_001u64}),
            json!({"max_transaction_ms": u64::MAX}),
        ] {
            let e = purge.validate_params(&bad).unwrap_err();
            assert!(e.contains("must be between"), "{bad}: {e}");
        }
        let prune = JobKind::RunnerPrune;
        assert!(prune.validate_params(&json!({"keep": "36500d"})).is_ok());
        let e = prune
            .validate_params(&json!({"keep": "99999999999w"}))
            .unwrap_err();
        assert!(e.contains("keep:") && e.contains("36500d"), "{e}");
        let e = JobKind::BreachTick
            .validate_params(&json!({"reminders": ["6h", "36501d"]}))
            .unwrap_err();
        assert!(e.contains("reminders:"), "{e}");
    }
}
