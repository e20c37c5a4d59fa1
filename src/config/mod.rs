//! `lethe.toml` + `jobs/*.toml` → typed, validated configuration.
//!
//! Every error names the file and, where the TOML parser or a span knows it,
//! the line and column, so a broken deploy is fixed in one look.

mod api_keys;
mod data_map;
mod jobs;

pub use crate::policy::{format_duration, parse_duration, MAX_DURATION};
pub use crate::secret::{redact_url, url_has_password, Secret, SecretSource};
pub use api_keys::{ApiKey, ApiScope};
pub use data_map::{
    AnonymizeRule, AppMapping, DataMapEntry, Erasure, MembershipsTable, OrgsTable, SubjectsTable,
};
pub use jobs::{from_text as job_from_text, CatchUp, JobSpec};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::error::{Error, Result};

/// Environment variables that override config values (secrets and per-host settings).
pub const ENV_CONFIG: &str = "LETHE_CONFIG";
pub const ENV_DATABASE_URL: &str = "LETHE_DATABASE_URL";
pub const ENV_STORE_URL: &str = "LETHE_STORE_URL";
pub const ENV_HTTP_LISTEN: &str = "LETHE_HTTP_LISTEN";
pub const ENV_SMTP_PASSWORD: &str = "LETHE_SMTP_PASSWORD";
pub const ENV_AUDIT_SIGNING_KEY: &str = "AUDIT_SIGNING_KEY";

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
    /// age public keys export archives are encrypted to (default: backup.recipients).
    pub export_recipients: Vec<String>,
    pub export_link_ttl: Duration,
    /// Keys pseudonyms and the erasure ledger (keyed HMAC).
    pub pseudonym_key: SecretSource,
    /// Completed requests in the last this-long go into the SLA report.
    pub report_period: Duration,
    pub export_prefix: String,
}

#[derive(Debug, Clone)]
pub struct ObjectStoreConfig {
    /// `s3://bucket/prefix` or `file:///abs/path` (relative `file://` paths resolve against the config).
    pub url: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub path_style: bool,
    pub upload_concurrency: usize,
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
    pub rpo: Duration,
    pub keep: KeepPolicy,
    /// PostgreSQL server URL (any database) where verify creates its scratch database; default: the app's server.
    pub scratch_url: Option<String>,
    /// Folder with pg_dump / pg_restore; default: PATH, then /usr/lib/postgresql/*/bin.
    pub pg_bin: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// The application database (the data Lethe keeps promises about).
    pub url: String,
    /// Pool size: one pool per process, shared by jobs and the DSR API.
    pub max_connections: u32,
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
    pub dpo: Vec<String>,
    pub ops: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub signing_key: SecretSource,
}

// ---- raw TOML shapes -------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    database: RawDatabase,
    #[serde(default)]
    store: Option<RawStore>,
    #[serde(default)]
    runner: RawRunner,
    #[serde(default)]
    http: RawHttp,
    mail: RawMail,
    #[serde(default)]
    audit: RawAudit,
    app: Option<data_map::RawApp>,
    #[serde(default)]
    data_map: Vec<data_map::RawEntry>,
    object_store: Option<RawObjectStore>,
    #[serde(default)]
    backup: RawBackup,
    #[serde(default)]
    dsr: RawDsr,
    #[serde(default)]
    keys: RawKeys,
    #[serde(default)]
    breach: RawBreach,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBreach {
    reminders: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawKeys {
    provider: Option<KmsProvider>,
    keyring_file: Option<String>,
    kms_endpoint: Option<String>,
    region: Option<String>,
    dek_rotation: Option<Spanned<String>>,
    kek_rotation: Option<Spanned<String>>,
    shred_after: Option<Spanned<String>>,
    deletion_window_days: Option<Spanned<i32>>,
    concurrency: Option<Spanned<usize>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDsr {
    default_deadline: Option<Spanned<String>>,
    at_risk: Option<Spanned<String>>,
    #[serde(default)]
    export_recipients: Vec<Spanned<String>>,
    export_link_ttl: Option<Spanned<String>>,
    pseudonym_key_env: Option<String>,
    pseudonym_key_file: Option<String>,
    report_period: Option<Spanned<String>>,
    export_prefix: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawObjectStore {
    url: Spanned<String>,
    endpoint: Option<String>,
    region: Option<String>,
    #[serde(default)]
    path_style: bool,
    upload_concurrency: Option<Spanned<usize>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBackup {
    #[serde(default)]
    recipients: Vec<Spanned<String>>,
    identity_env: Option<String>,
    identity_file: Option<String>,
    zstd_level: Option<Spanned<i32>>,
    zstd_threads: Option<Spanned<u32>>,
    part_size_mib: Option<Spanned<u64>>,
    prefix: Option<String>,
    rpo: Option<Spanned<String>>,
    keep: Option<KeepPolicy>,
    scratch_url: Option<Spanned<String>>,
    pg_bin: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    url: Spanned<String>,
    max_connections: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    url: Option<Spanned<String>>,
    max_connections: Option<Spanned<u32>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRunner {
    workers: Option<Spanned<usize>>,
    poll_interval: Option<Spanned<String>>,
    lease: Option<Spanned<String>>,
    retry_base: Option<Spanned<String>>,
    retry_max: Option<Spanned<String>>,
    catch_up: Option<CatchUp>,
    drain_timeout: Option<Spanned<String>>,
    jobs_dir: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: Option<Spanned<String>>,
    max_concurrency: Option<Spanned<usize>>,
    queue_timeout: Option<Spanned<String>>,
    #[serde(default)]
    api_key_hashes: Vec<Spanned<String>>,
    #[serde(default)]
    api_keys: Vec<api_keys::RawApiKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMail {
    from: Spanned<String>,
    transport: MailTransportKind,
    dir: Option<String>,
    smtp: Option<RawSmtp>,
    max_attempts: Option<Spanned<u32>>,
    retry_base: Option<Spanned<String>>,
    batch_size: Option<Spanned<u32>>,
    #[serde(default)]
    recipients: RawRecipients,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSmtp {
    host: String,
    port: Option<u16>,
    tls: Option<SmtpTls>,
    username: Option<String>,
    password_env: Option<String>,
    password_file: Option<String>,
    timeout: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRecipients {
    #[serde(default)]
    dpo: Vec<Spanned<String>>,
    #[serde(default)]
    ops: Vec<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    signing_key_env: Option<String>,
    signing_key_file: Option<String>,
}

// ---- loading ---------------------------------------------------------------

/// Source text plus path, to turn byte spans into `file:line:col` errors.
pub(crate) struct SourceFile<'a> {
    pub path: &'a Path,
    pub text: &'a str,
}

impl SourceFile<'_> {
    pub fn error_at(&self, span: std::ops::Range<usize>, message: impl Into<String>) -> Error {
        let (line, column) = line_col(self.text, span.start);
        Error::Config {
            path: self.path.to_path_buf(),
            line: Some(line),
            column: Some(column),
            message: message.into(),
        }
    }

    pub fn error(&self, message: impl Into<String>) -> Error {
        Error::config(self.path, message)
    }

    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        toml::from_str(self.text).map_err(|e| {
            // toml's Display repeats the snippet; keep just the message and point at the span.
            let message = e.message().trim().to_string();
            match e.span() {
                Some(span) => self.error_at(span, message),
                None => self.error(message),
            }
        })
    }

    /// A duration between 0 and [`MAX_DURATION`].
    pub fn duration(&self, value: &Spanned<String>, key: &str) -> Result<Duration> {
        self.duration_in(value, key, Duration::ZERO..=MAX_DURATION)
    }

    /// A duration within `range`; the error names the key and the range.
    pub fn duration_in(
        &self,
        value: &Spanned<String>,
        key: &str,
        range: std::ops::RangeInclusive<Duration>,
    ) -> Result<Duration> {
        let d = crate::policy::parse_bounded(value.get_ref())
            .map_err(|m| self.error_at(value.span(), format!("{key}: {m}")))?;
        if let Some(d) = d.filter(|d| range.contains(d)) {
            return Ok(d);
        }
        Err(self.error_at(
            value.span(),
            format!(
                "{key} must be between {} and {} (got `{}`)",
                format_duration(*range.start()),
                format_duration(*range.end()),
                value.get_ref()
            ),
        ))
    }

    /// A count within `range` (default when absent); the error names the key and the range.
    pub fn count<T>(
        &self,
        value: Option<Spanned<T>>,
        key: &str,
        range: std::ops::RangeInclusive<T>,
        default: T,
    ) -> Result<T>
    where
        T: PartialOrd + Copy + std::fmt::Display,
    {
        match value {
            None => Ok(default),
            Some(v) if range.contains(v.get_ref()) => Ok(v.into_inner()),
            Some(v) => Err(self.error_at(
                v.span(),
                format!(
                    "{key} must be between {} and {} (got {})",
                    range.start(),
                    range.end(),
                    v.get_ref()
                ),
            )),
        }
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, column)
}

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

        let database_url = match env_nonempty(ENV_DATABASE_URL) {
            Some(url) => url,
            None => {
                reject_password(&src, &raw.database.url, "database.url", ENV_DATABASE_URL)?;
                raw.database.url.get_ref().clone()
            }
        };
        let database_url = resolve_sqlite_url(&database_url, &dir);
        check_db_url(&src, &raw.database.url, &database_url, "database.url")?;

        let store_raw = raw.store.unwrap_or(RawStore {
            url: None,
            max_connections: None,
        });
        let store_url = match (env_nonempty(ENV_STORE_URL), &store_raw.url) {
            (Some(url), _) => resolve_sqlite_url(&url, &dir),
            (None, Some(url)) => {
                reject_password(&src, url, "store.url", ENV_STORE_URL)?;
                let resolved = resolve_sqlite_url(url.get_ref(), &dir);
                check_db_url(&src, url, &resolved, "store.url")?;
                resolved
            }
            (None, None) => database_url.clone(),
        };

        let database_max_connections = src.count(
            raw.database.max_connections,
            "database.max_connections",
            1..=1000,
            8,
        )?;
        let store_max_connections = src.count(
            store_raw.max_connections,
            "store.max_connections",
            1..=1000,
            8,
        )?;
        let runner = load_runner(&src, raw.runner, &dir)?;
        let http = load_http(&src, raw.http)?;
        let mail = load_mail(&src, raw.mail, &dir)?;
        let audit = AuditConfig {
            signing_key: SecretSource {
                env: raw
                    .audit
                    .signing_key_env
                    .unwrap_or_else(|| ENV_AUDIT_SIGNING_KEY.to_string()),
                file: raw.audit.signing_key_file.map(|f| dir.join(f)),
            },
        };
        let app = data_map::load_app(raw.app);
        let data_map = data_map::load_entries(&src, raw.data_map, app.as_ref())?;
        let object_store = raw
            .object_store
            .map(|o| load_object_store(&src, o, &dir))
            .transpose()?;
        let backup = load_backup(&src, raw.backup, &dir)?;
        let on_s3 = object_store
            .as_ref()
            .is_some_and(|o| o.url.starts_with("s3://"));
        let dsr = load_dsr(&src, raw.dsr, &dir, on_s3)?;
        let keys = load_keys(&src, raw.keys, &dir)?;
        let breach = BreachConfig {
            reminders: match &raw.breach.reminders {
                Some(list) => list
                    .iter()
                    .map(|m| src.duration(m, "breach.reminders"))
                    .collect::<Result<Vec<_>>>()?,
                None => vec![
                    Duration::from_secs(48 * 3600),
                    Duration::from_secs(24 * 3600),
                    Duration::from_secs(6 * 3600),
                ],
            },
        };
        let jobs = jobs::load_dir(&runner.jobs_dir)?;

        Ok(Config {
            path: path.to_path_buf(),
            dir,
            database: DatabaseConfig {
                url: database_url,
                max_connections: database_max_connections,
            },
            store: StoreConfig {
                url: store_url,
                max_connections: store_max_connections,
            },
            runner,
            http,
            mail,
            audit,
            app,
            data_map,
            object_store,
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

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn reject_password(src: &SourceFile, url: &Spanned<String>, key: &str, env: &str) -> Result<()> {
    if url_has_password(url.get_ref()) {
        return Err(src.error_at(
            url.span(),
            format!("{key} contains a password; secrets do not belong in the config file: remove it and set ${env} to the full URL"),
        ));
    }
    Ok(())
}

fn check_db_url(src: &SourceFile, raw: &Spanned<String>, url: &str, key: &str) -> Result<()> {
    if url.starts_with("postgres://")
        || url.starts_with("postgresql://")
        || url.starts_with("sqlite:")
    {
        Ok(())
    } else {
        Err(src.error_at(
            raw.span(),
            format!(
                "{key} must start with postgres:// or sqlite:// (got `{}`)",
                redact_url(url)
            ),
        ))
    }
}

/// `sqlite://app.db` is relative to the config file's folder, not the shell's.
fn resolve_sqlite_url(url: &str, dir: &Path) -> String {
    let Some(rest) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    else {
        return url.to_string();
    };
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    if path.starts_with('/') || path == ":memory:" {
        return url.to_string();
    }
    let joined = dir.join(path);
    match query {
        Some(q) => format!("sqlite://{}?{q}", joined.display()),
        None => format!("sqlite://{}", joined.display()),
    }
}

fn load_runner(src: &SourceFile, raw: RawRunner, dir: &Path) -> Result<RunnerConfig> {
    const MS: Duration = Duration::from_millis(1);
    let dur = |v: &Option<Spanned<String>>,
               key: &str,
               range: std::ops::RangeInclusive<Duration>,
               default: Duration|
     -> Result<Duration> {
        match v {
            Some(s) => src.duration_in(s, key, range),
            None => Ok(default),
        }
    };
    let secs = Duration::from_secs;
    Ok(RunnerConfig {
        workers: src.count(raw.workers, "runner.workers", 1..=64, 2)?,
        // Zero would poll the store in a busy loop.
        poll_interval: dur(
            &raw.poll_interval,
            "runner.poll_interval",
            10 * MS..=secs(3600),
            secs(1),
        )?,
        // A lease is renewed every third of itself; past a week a crashed
        // worker's run would wait that long for rescue.
        lease: dur(
            &raw.lease,
            "runner.lease",
            secs(1)..=secs(7 * 86_400),
            secs(60),
        )?,
        retry_base: dur(
            &raw.retry_base,
            "runner.retry_base",
            Duration::ZERO..=MAX_DURATION,
            secs(30),
        )?,
        retry_max: dur(
            &raw.retry_max,
            "runner.retry_max",
            Duration::ZERO..=MAX_DURATION,
            secs(3600),
        )?,
        catch_up: raw.catch_up.unwrap_or(CatchUp::Latest),
        drain_timeout: dur(
            &raw.drain_timeout,
            "runner.drain_timeout",
            Duration::ZERO..=MAX_DURATION,
            secs(30),
        )?,
        jobs_dir: dir.join(raw.jobs_dir.unwrap_or_else(|| "jobs".to_string())),
    })
}

fn load_http(src: &SourceFile, raw: RawHttp) -> Result<HttpConfig> {
    let listen = match (env_nonempty(ENV_HTTP_LISTEN), raw.listen) {
        (Some(v), _) => v.parse().map_err(|_| {
            src.error(format!(
                "${ENV_HTTP_LISTEN}=`{v}` is not an address like 127.0.0.1:8080"
            ))
        })?,
        (None, Some(v)) => v.get_ref().parse().map_err(|_| {
            src.error_at(
                v.span(),
                format!(
                    "http.listen `{}` is not an address like 127.0.0.1:8080",
                    v.get_ref()
                ),
            )
        })?,
        (None, None) => SocketAddr::from(([127, 0, 0, 1], 8080)),
    };
    let api_keys = api_keys::load(src, raw.api_keys, raw.api_key_hashes)?;
    Ok(HttpConfig {
        listen,
        max_concurrency: src.count(raw.max_concurrency, "http.max_concurrency", 1..=1024, 8)?,
        queue_timeout: match &raw.queue_timeout {
            Some(t) => src.duration_in(
                t,
                "http.queue_timeout",
                Duration::ZERO..=Duration::from_secs(60),
            )?,
            None => Duration::from_secs(5),
        },
        api_keys,
    })
}

fn load_mail(src: &SourceFile, raw: RawMail, dir: &Path) -> Result<MailConfig> {
    check_address(src, &raw.from, "mail.from")?;
    for r in raw.recipients.dpo.iter().chain(raw.recipients.ops.iter()) {
        check_address(src, r, "mail.recipients")?;
    }
    let smtp = match raw.smtp {
        Some(s) => Some(SmtpConfig {
            port: s.port.unwrap_or(match s.tls {
                Some(SmtpTls::Tls) => 465,
                Some(SmtpTls::None) => 25,
                _ => 587,
            }),
            host: s.host,
            tls: s.tls.unwrap_or(SmtpTls::Starttls),
            username: s.username,
            password: SecretSource {
                env: s
                    .password_env
                    .unwrap_or_else(|| ENV_SMTP_PASSWORD.to_string()),
                file: s.password_file.map(|f| dir.join(f)),
            },
            timeout: match &s.timeout {
                Some(t) => src.duration_in(
                    t,
                    "mail.smtp.timeout",
                    Duration::from_millis(100)..=Duration::from_secs(3600),
                )?,
                None => Duration::from_secs(30),
            },
        }),
        None => None,
    };
    if raw.transport == MailTransportKind::Smtp && smtp.is_none() {
        return Err(src.error(
            "mail.transport is \"smtp\" but there is no [mail.smtp] table with at least `host`",
        ));
    }
    Ok(MailConfig {
        from: raw.from.into_inner(),
        transport: raw.transport,
        dir: dir.join(raw.dir.unwrap_or_else(|| "mail".to_string())),
        smtp,
        max_attempts: src.count(raw.max_attempts, "mail.max_attempts", 1..=1000, 10)?,
        retry_base: match &raw.retry_base {
            Some(t) => src.duration(t, "mail.retry_base")?,
            None => Duration::from_secs(30),
        },
        batch_size: src.count(raw.batch_size, "mail.batch_size", 1..=100_000, 50)?,
        dpo: raw
            .recipients
            .dpo
            .into_iter()
            .map(Spanned::into_inner)
            .collect(),
        ops: raw
            .recipients
            .ops
            .into_iter()
            .map(Spanned::into_inner)
            .collect(),
    })
}

pub const ENV_AGE_IDENTITY: &str = "LETHE_AGE_IDENTITY";
pub const ENV_PSEUDONYM_KEY: &str = "LETHE_PSEUDONYM_KEY";

fn load_keys(src: &SourceFile, raw: RawKeys, dir: &Path) -> Result<KeysConfig> {
    let dur = |v: &Option<Spanned<String>>, key: &str, default: u64| -> Result<Duration> {
        match v {
            Some(s) => src.duration(s, key),
            None => Ok(Duration::from_secs(default)),
        }
    };
    let window = match raw.deletion_window_days {
        Some(w) if !(7..=30).contains(w.get_ref()) => {
            return Err(src.error_at(
                w.span(),
                "keys.deletion_window_days must be between 7 and 30 (what AWS KMS accepts)",
            ))
        }
        Some(w) => w.into_inner(),
        None => 7,
    };
    Ok(KeysConfig {
        provider: raw.provider.unwrap_or(KmsProvider::Local),
        keyring_file: dir.join(raw.keyring_file.unwrap_or_else(|| "keyring.json".into())),
        kms_endpoint: raw.kms_endpoint,
        region: raw.region,
        dek_rotation: dur(&raw.dek_rotation, "keys.dek_rotation", 90 * 86_400)?,
        kek_rotation: dur(&raw.kek_rotation, "keys.kek_rotation", 365 * 86_400)?,
        shred_after: dur(&raw.shred_after, "keys.shred_after", 30 * 86_400)?,
        deletion_window_days: window,
        concurrency: src.count(raw.concurrency, "keys.concurrency", 1..=64, 8)?,
    })
}

fn load_dsr(src: &SourceFile, raw: RawDsr, dir: &Path, on_s3: bool) -> Result<DsrConfig> {
    let dur = |v: &Option<Spanned<String>>, key: &str, default: u64| -> Result<Duration> {
        match v {
            Some(s) => src.duration(s, key),
            None => Ok(Duration::from_secs(default)),
        }
    };
    for r in &raw.export_recipients {
        r.get_ref().parse::<age::x25519::Recipient>().map_err(|e| {
            src.error_at(
                r.span(),
                format!(
                    "dsr.export_recipients: `{}` is not an age public key: {e}",
                    r.get_ref()
                ),
            )
        })?;
    }
    Ok(DsrConfig {
        default_deadline: dur(&raw.default_deadline, "dsr.default_deadline", 30 * 86_400)?,
        at_risk: dur(&raw.at_risk, "dsr.at_risk", 7 * 86_400)?,
        export_recipients: raw
            .export_recipients
            .into_iter()
            .map(Spanned::into_inner)
            .collect(),
        // S3 signs links for at most 7 days: a longer TTL would fail every export.
        export_link_ttl: match &raw.export_link_ttl {
            Some(t) => src.duration_in(
                t,
                "dsr.export_link_ttl",
                Duration::from_secs(1)..=if on_s3 {
                    Duration::from_secs(7 * 86_400)
                } else {
                    MAX_DURATION
                },
            )?,
            None => Duration::from_secs(7 * 86_400),
        },
        pseudonym_key: SecretSource {
            env: raw
                .pseudonym_key_env
                .unwrap_or_else(|| ENV_PSEUDONYM_KEY.to_string()),
            file: raw.pseudonym_key_file.map(|f| dir.join(f)),
        },
        report_period: dur(&raw.report_period, "dsr.report_period", 7 * 86_400)?,
        export_prefix: raw.export_prefix.unwrap_or_else(|| "exports/".into()),
    })
}

fn load_object_store(
    src: &SourceFile,
    raw: RawObjectStore,
    dir: &Path,
) -> Result<ObjectStoreConfig> {
    let url = raw.url.get_ref().clone();
    let url = if let Some(path) = url.strip_prefix("file://") {
        if path.starts_with('/') {
            url.clone()
        } else {
            format!("file://{}", dir.join(path).display())
        }
    } else if url.starts_with("s3://") && url.len() > 5 {
        url.clone()
    } else {
        return Err(src.error_at(
            raw.url.span(),
            format!("object_store.url `{url}` must be s3://BUCKET[/PREFIX] or file://PATH"),
        ));
    };
    Ok(ObjectStoreConfig {
        url,
        endpoint: raw.endpoint,
        region: raw.region,
        path_style: raw.path_style,
        upload_concurrency: src.count(
            raw.upload_concurrency,
            "object_store.upload_concurrency",
            1..=64,
            4,
        )?,
    })
}

fn load_backup(src: &SourceFile, raw: RawBackup, dir: &Path) -> Result<BackupConfig> {
    for r in &raw.recipients {
        r.get_ref().parse::<age::x25519::Recipient>().map_err(|e| {
            src.error_at(
                r.span(),
                format!(
                    "backup.recipients: `{}` is not an age public key (age1…): {e}",
                    r.get_ref()
                ),
            )
        })?;
    }
    let level = match raw.zstd_level {
        Some(l) if !(1..=19).contains(l.get_ref()) => {
            return Err(src.error_at(l.span(), "backup.zstd_level must be between 1 and 19"))
        }
        Some(l) => l.into_inner(),
        None => 3,
    };
    let part_mib = match raw.part_size_mib {
        Some(p) if !(5..=512).contains(p.get_ref()) => {
            return Err(src.error_at(
                p.span(),
                "backup.part_size_mib must be between 5 (S3's minimum) and 512",
            ))
        }
        Some(p) => p.into_inner(),
        None => 16,
    };
    if let Some(u) = &raw.scratch_url {
        reject_password(src, u, "backup.scratch_url", ENV_DATABASE_URL)?;
    }
    Ok(BackupConfig {
        recipients: raw
            .recipients
            .into_iter()
            .map(Spanned::into_inner)
            .collect(),
        identity: SecretSource {
            env: raw
                .identity_env
                .unwrap_or_else(|| ENV_AGE_IDENTITY.to_string()),
            file: raw.identity_file.map(|f| dir.join(f)),
        },
        zstd_level: level,
        zstd_threads: src.count(raw.zstd_threads, "backup.zstd_threads", 1..=64, 2)?,
        part_size: usize::try_from(part_mib * 1024 * 1024).unwrap_or(16 << 20),
        prefix: raw.prefix.unwrap_or_else(|| "backups/".to_string()),
        rpo: match &raw.rpo {
            Some(r) => src.duration(r, "backup.rpo")?,
            None => Duration::from_secs(3600),
        },
        keep: raw.keep.unwrap_or(KeepPolicy {
            last: 3,
            hourly: 24,
            daily: 7,
            weekly: 4,
            monthly: 12,
            yearly: 3,
        }),
        scratch_url: raw.scratch_url.map(Spanned::into_inner),
        pg_bin: raw.pg_bin.map(PathBuf::from),
    })
}

fn check_address(src: &SourceFile, value: &Spanned<String>, key: &str) -> Result<()> {
    value
        .get_ref()
        .parse::<lettre::message::Mailbox>()
        .map(|_| ())
        .map_err(|e| {
            src.error_at(
                value.span(),
                format!("{key}: `{}` is not a mail address ({e})", value.get_ref()),
            )
        })
}

#[cfg(test)]
mod tests {
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
