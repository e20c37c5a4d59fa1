//! `lethe.toml` + `jobs/*.toml` → typed, validated configuration.
//!
//! Every error names the file and, where the TOML parser or a span knows it,
//! the line and column, so a broken deploy is fixed in one look.

mod api_keys;
mod backup;
mod data_map;
mod jobs;
mod object_retention;
mod raw;
mod sections;
pub use sections::same_age_key;
mod source;

pub use crate::policy::{format_duration, parse_duration, MAX_DURATION};
pub use crate::secret::{redact_url, url_has_password, Secret, SecretSource};
pub use api_keys::{ApiKey, ApiScope};
pub use data_map::{
    AnonymizeRule, AppMapping, DataMapEntry, Erasure, KeysTable, MembershipsTable, ObjectColumn,
    OrgsTable, SubjectsTable,
};
pub use jobs::{from_text as job_from_text, CatchUp, JobSpec};
pub use object_retention::{KeyTemplate, Named, ObjectRetention};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use backup::load_backup;
use raw::RawConfig;
use sections::*;
pub(crate) use source::SourceFile;

/// Environment variables that override config values (secrets and per-host settings).
pub const ENV_CONFIG: &str = "LETHE_CONFIG";
pub const ENV_DATABASE_URL: &str = "LETHE_DATABASE_URL";
pub const ENV_STORE_URL: &str = "LETHE_STORE_URL";
pub const ENV_HTTP_LISTEN: &str = "LETHE_HTTP_LISTEN";
pub const ENV_SMTP_PASSWORD: &str = "LETHE_SMTP_PASSWORD";
pub const ENV_AUDIT_SIGNING_KEY: &str = "AUDIT_SIGNING_KEY";
pub const ENV_AGE_IDENTITY: &str = "LETHE_AGE_IDENTITY";
pub const ENV_PSEUDONYM_KEY: &str = "LETHE_PSEUDONYM_KEY";

#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from, and its folder (relative paths resolve against it).
    pub path: PathBuf,
    pub dir: PathBuf,
    pub database: DatabaseConfig,
    pub store: StoreConfig,
    pub runner: RunnerConfig,
    pub http: HttpConfig,
    pub mail: MailConfig,
    pub audit: AuditConfig,
    pub app: Option<AppMapping>,
    pub data_map: Vec<DataMapEntry>,
    pub object_store: Option<ObjectStoreConfig>,
    /// `[object_stores.NAME]`: the application's stores, for its files.
    pub object_stores: std::collections::BTreeMap<String, ObjectStoreConfig>,
    /// `[[object_retention]]`: files no row references, by prefix and age.
    pub object_retention: Vec<ObjectRetention>,
    pub backup: BackupConfig,
    pub dsr: DsrConfig,
    pub keys: KeysConfig,
    pub breach: BreachConfig,
    pub jobs: Vec<JobSpec>,
}

#[derive(Debug, Clone)]
pub struct BreachConfig {
    /// Reminder marks before each party's deadline.
    pub reminders: Vec<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KmsProvider {
    Local,
    Aws,
}

#[derive(Debug, Clone)]
pub struct KeysConfig {
    pub provider: KmsProvider,
    /// The local provider's keyring (key material: keep it like a secret).
    pub keyring_file: PathBuf,
    pub kms_endpoint: Option<String>,
    pub region: Option<String>,
    pub dek_rotation: Duration,
    pub kek_rotation: Duration,
    /// Closed orgs' keys are shredded this long after closure.
    pub shred_after: Duration,
    pub deletion_window_days: i32,
    pub concurrency: usize,
}

#[derive(Debug, Clone)]
pub struct DsrConfig {
    /// Deadline where no jurisdiction rule applies.
    pub default_deadline: Duration,
    /// Fewer days left than this: `at_risk`.
    pub at_risk: Duration,
    /// age public keys export archives are encrypted to: the DPO's own, not the backups'.
    pub export_recipients: Vec<String>,
    /// Allows exports encrypted to the backup keys (whoever opens an export
    /// could then open every backup): off unless set.
    pub export_to_backup_keys: bool,
    /// The subject gets their own copy: a passphrase-protected ZIP behind a
    /// link, the passphrase in a separate mail.
    pub deliver_to_subject: bool,
    pub export_link_ttl: Duration,
    /// Files beyond this many bytes in all are left out of an export (named in its README).
    pub export_max_bytes: u64,
    /// Keys pseudonyms and the erasure ledger (keyed HMAC).
    pub pseudonym_key: SecretSource,
    /// Completed requests in the last this-long go into the SLA report.
    pub report_period: Duration,
    pub export_prefix: String,
    /// Requests that arrived unverified and are still unverified this long
    /// after receipt are rejected (`identity_unverified`); `None`: they stay
    /// open (and count against their deadline) until verified.
    pub verify_within: Option<Duration>,
}

#[cfg(test)]
impl DsrConfig {
    /// The starter config's deadlines and periods, for unit tests.
    pub fn for_tests() -> Self {
        DsrConfig {
            default_deadline: std::time::Duration::from_secs(30 * 86_400),
            at_risk: std::time::Duration::from_secs(7 * 86_400),
            export_recipients: vec![],
            export_to_backup_keys: false,
            deliver_to_subject: false,
            export_link_ttl: std::time::Duration::from_secs(86_400),
            export_max_bytes: 0,
            pseudonym_key: SecretSource {
                env: String::new(),
                file: None,
            },
            report_period: std::time::Duration::from_secs(7 * 86_400),
            export_prefix: String::new(),
            verify_within: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ObjectStoreConfig {
    /// `s3://bucket/prefix` or `file:///abs/path` (relative `file://` paths resolve against the config).
    pub url: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub path_style: bool,
    pub upload_concurrency: usize,
    /// Environment variables with this store's own access key id and secret.
    pub credentials_env: Option<(String, String)>,
}

/// GFS retention for backups: how many of each to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeepPolicy {
    #[serde(default)]
    pub last: u32,
    #[serde(default)]
    pub hourly: u32,
    #[serde(default)]
    pub daily: u32,
    #[serde(default)]
    pub weekly: u32,
    #[serde(default)]
    pub monthly: u32,
    #[serde(default)]
    pub yearly: u32,
}

#[derive(Debug, Clone)]
pub struct BackupConfig {
    /// age public keys (`age1…`) every backup is encrypted to.
    pub recipients: Vec<String>,
    /// The age identity for verify and restore.
    pub identity: SecretSource,
    pub zstd_level: i32,
    pub zstd_threads: u32,
    pub part_size: usize,
    pub prefix: String,
    /// Where `lethe wal push` archives PostgreSQL's WAL: `PREFIX<timeline>/<segment>`.
    pub wal_prefix: String,
    pub rpo: Duration,
    pub keep: KeepPolicy,
    /// PostgreSQL server URL (any database) where verify creates its scratch
    /// database: a server apart from the application's, since a drill competes
    /// with production for I/O, memory and disk.
    pub scratch_url: Option<String>,
    /// Lets restore drills run on the application's own server (no `scratch_url`, or the same one).
    pub allow_scratch_on_app_server: bool,
    /// pg_restore jobs for a drill; above 1 the decrypted dump is spooled to a
    /// temporary file first (as large as the dump) and restored in parallel.
    pub verify_jobs: u32,
    /// The restore time promised (recovery time objective); a drill slower than it alerts ops.
    pub rto: Option<Duration>,
    /// Folder with pg_dump / pg_restore; default: PATH, then /usr/lib/postgresql/*/bin.
    pub pg_bin: Option<PathBuf>,
    pub mode: BackupMode,
    /// How far back a restore may reach any moment: WAL is kept whole from
    /// the oldest base backup this young (at least the newest); older kept
    /// base backups keep only the WAL they need to be consistent.
    pub pitr_window: Duration,
    /// The system user that runs the PostgreSQL servers Lethe starts from a
    /// base backup (drills, point-in-time restores) when Lethe runs as root.
    pub server_user: Option<String>,
    /// The `lethe` binary those servers' `restore_command` runs; default: this one.
    pub lethe_bin: Option<PathBuf>,
}

/// What `backup.create` takes: a logical dump (portable, any database) or a
/// physical base backup of a PostgreSQL cluster (with the WAL archive: any moment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupMode {
    Logical,
    Physical,
}

#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// The application database (the data Lethe keeps promises about).
    pub url: String,
    /// Pool size: one pool per process, shared by jobs and the DSR API.
    pub max_connections: u32,
    /// PostgreSQL: the role whose DELETEs an append-only table's guard lets
    /// through; `None`: the role Lethe connects as (`current_user`).
    pub retention_role: Option<String>,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Lethe's own state: queue, audit chain, outbox. PostgreSQL keeps it in schema `lethe`.
    pub url: String,
    pub max_connections: u32,
}

#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub workers: usize,
    pub poll_interval: Duration,
    pub lease: Duration,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub catch_up: CatchUp,
    pub drain_timeout: Duration,
    pub jobs_dir: PathBuf,
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// DSR API requests handled at once; more wait up to `queue_timeout`, then get 503.
    pub max_concurrency: usize,
    pub queue_timeout: Duration,
    /// The callers the DSR intake API accepts (`[[http.api_keys]]`, and the
    /// older `api_key_hashes`). Only hashes live in config.
    pub api_keys: Vec<ApiKey>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MailTransportKind {
    File,
    Smtp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    None,
    Starttls,
    Tls,
}

#[derive(Debug, Clone)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub username: Option<String>,
    pub password: SecretSource,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct MailConfig {
    pub from: String,
    pub transport: MailTransportKind,
    pub dir: PathBuf,
    pub smtp: Option<SmtpConfig>,
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub batch_size: u32,
    /// The zone every date shown to a person is written in (UTC alongside).
    pub timezone: chrono_tz::Tz,
    pub dpo: Vec<String>,
    pub ops: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub signing_key: SecretSource,
    /// Where `audit.anchor` writes chain heads (S3 with Object Lock, or a folder).
    pub anchor_url: Option<ObjectStoreConfig>,
    /// How long each anchor is kept under Object Lock (COMPLIANCE) on S3.
    pub anchor_retention: Duration,
}

// ---- raw TOML shapes -------------------------------------------------------

/// Which config file to read: `--config`, else `$LETHE_CONFIG`, else `./lethe.toml`.
pub fn resolve_path(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    match std::env::var(ENV_CONFIG) {
        Ok(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from("lethe.toml"),
    }
}

impl Config {
    /// The age recipients export archives are encrypted to:
    /// `dsr.export_recipients`, or the backup's where `dsr.export_to_backup_keys`
    /// allows it; an error (before anything is built) when there are none.
    pub fn export_recipients(&self) -> Result<&[String]> {
        match (
            &self.dsr.export_recipients[..],
            self.dsr.export_to_backup_keys,
        ) {
            ([], true) if !self.backup.recipients.is_empty() => Ok(&self.backup.recipients),
            ([], _) => Err(Error::Usage(
                "dsr.export_recipients is empty, so exports have no key to be encrypted to: \
                 make a key pair for the DPO (age-keygen -o dpo-export.key) and set \
                 dsr.export_recipients = [\"age1…\"] to its public key"
                    .into(),
            )),
            (keys, _) => Ok(keys),
        }
    }

    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::config(
                path,
                format!(
                    "cannot read config: {e} (create one with `lethe init`, or pass --config FILE)"
                ),
            )
        })?;
        Config::from_text(path, &text)
    }

    /// Parses and validates `text` as if read from `path` (relative paths,
    /// jobs_dir and error locations resolve against it).
    pub fn from_text(path: &Path, text: &str) -> Result<Config> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let src = SourceFile { path, text };
        let raw: RawConfig = src.parse()?;

        let (database, store) = load_database_and_store(&src, raw.database, raw.store, &dir)?;
        let runner = load_runner(&src, raw.runner, &dir)?;
        let http = load_http(&src, raw.http)?;
        let mail = load_mail(&src, raw.mail, &dir)?;
        let audit = load_audit(&src, raw.audit, &dir)?;
        let app = data_map::load_app(raw.app);
        let object_store = raw
            .object_store
            .map(|o| load_object_store(&src, "object_store", o, &dir))
            .transpose()?;
        let object_stores = raw
            .object_stores
            .into_iter()
            .map(|(name, o)| {
                let store = load_object_store(&src, &format!("object_stores.{name}"), o, &dir)?;
                Ok((name, store))
            })
            .collect::<Result<std::collections::BTreeMap<_, _>>>()?;
        let data_map = data_map::load_entries(&src, raw.data_map, app.as_ref(), &object_stores)?;
        let object_retention =
            object_retention::load(&src, raw.object_retention, app.as_ref(), &object_stores)?;
        let on_postgres = database.url.starts_with("postgres");
        let backup = load_backup(&src, raw.backup, &dir, on_postgres)?;
        let on_s3 = object_store
            .as_ref()
            .is_some_and(|o| o.url.starts_with("s3://"));
        let dsr = load_dsr(&src, raw.dsr, &dir, on_s3, &backup.recipients)?;
        let keys = load_keys(&src, raw.keys, &dir)?;
        let breach = load_breach(&src, raw.breach)?;
        let jobs = jobs::load_dir(&runner.jobs_dir)?;

        Ok(Config {
            path: path.to_path_buf(),
            dir,
            database,
            store,
            runner,
            http,
            mail,
            audit,
            app,
            data_map,
            object_store,
            object_stores,
            object_retention,
            backup,
            dsr,
            keys,
            breach,
            jobs,
        })
    }

    pub fn job(&self, name: &str) -> Option<&JobSpec> {
        self.jobs.iter().find(|j| j.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::source::{line_col, resolve_sqlite_url};
    use super::*;

    #[test]
    fn an_s3_export_link_is_refused_past_seven_days() {
        let base = "[database]\nurl = \"sqlite://app.db\"\n[mail]\nfrom = \"l@x.example\"\ntransport = \"file\"\ndir = \"mail\"\n";
        let s3 = "[object_store]\nurl = \"s3://bucket/p\"\n";
        let ttl = |d: &str| format!("[dsr]\nexport_link_ttl = \"{d}\"\n");
        let load = |t: String| Config::from_text(Path::new("lethe.toml"), &t);
        let err = load(format!("{base}{s3}{}", ttl("8d")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("dsr.export_link_ttl"), "{err}");
        assert!(load(format!("{base}{s3}{}", ttl("7d"))).is_ok());
        assert!(
            load(format!("{base}{}", ttl("30d"))).is_ok(),
            "a folder store has no such limit"
        );
    }

    #[test]
    fn rectifiable_never_lists_a_column_that_keys_scopes_or_dates_rows() {
        let base = "[database]\nurl = \"sqlite://app.db\"\n[mail]\nfrom = \"l@x.example\"\ntransport = \"file\"\ndir = \"mail\"\n\
                    [app]\nsubjects = { table = \"users\", id = \"id\", email = \"email\" }\n";
        let entry = |table: &str, extra: &str, cols: &str| {
            format!(
                "[[data_map]]\ntable = \"{table}\"\nclass = \"c\"\n{extra}rectifiable = [{cols}]\n"
            )
        };
        let load = |e: String| Config::from_text(Path::new("lethe.toml"), &format!("{base}{e}"));
        let logs = "subject = \"user_id\"\norg = \"org_id\"\ntimestamp = \"at\"\n";
        for (table, extra, cols, why) in [
            (
                "users",
                "subject = \"id\"\n",
                "\"email\"",
                "how requests find the subject",
            ),
            ("users", "subject = \"id\"\n", "\"id\"", "names the subject"),
            ("logs", logs, "\"org_id\"", "names the org"),
            ("logs", logs, "\"at\"", "retention counts from it"),
            ("logs", logs, "\"path\", \"path\"", "twice"),
            ("notes", "", "\"body\"", "needs a `subject` column"),
        ] {
            let err = load(entry(table, extra, cols)).unwrap_err().to_string();
            assert!(
                err.contains(why) && err.contains("lethe.toml:"),
                "{cols}: {err}"
            );
        }
        assert!(load(entry("users", "subject = \"id\"\n", "\"name\"")).is_ok());
    }

    #[test]
    fn line_col_counts_from_one() {
        let t = "a = 1\nbb = 2\n";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 6), (2, 1));
        assert_eq!(line_col(t, 8), (2, 3));
    }

    #[test]
    fn sqlite_paths_resolve_against_config_dir() {
        let d = Path::new("/etc/lethe");
        assert_eq!(
            resolve_sqlite_url("sqlite://app.db", d),
            "sqlite:///etc/lethe/app.db"
        );
        assert_eq!(
            resolve_sqlite_url("sqlite:///var/a.db?mode=rwc", d),
            "sqlite:///var/a.db?mode=rwc"
        );
        assert_eq!(resolve_sqlite_url("postgres://h/db", d), "postgres://h/db");
    }
}
