//! One loader per config section: raw TOML in, validated section out.

use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::raw::*;
use super::source::*;
use super::*;
use crate::error::Result;

pub(super) fn load_runner(src: &SourceFile, raw: RawRunner, dir: &Path) -> Result<RunnerConfig> {
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

pub(super) fn load_http(src: &SourceFile, raw: RawHttp) -> Result<HttpConfig> {
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

pub(super) fn load_mail(src: &SourceFile, raw: RawMail, dir: &Path) -> Result<MailConfig> {
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
        timezone: src.timezone(raw.timezone.as_ref(), "mail.timezone")?,
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

pub(super) fn load_keys(src: &SourceFile, raw: RawKeys, dir: &Path) -> Result<KeysConfig> {
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

pub(super) fn load_dsr(
    src: &SourceFile,
    raw: RawDsr,
    dir: &Path,
    on_s3: bool,
    backup_keys: &[String],
) -> Result<DsrConfig> {
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
    let to_backup_keys = raw.export_to_backup_keys.unwrap_or(false);
    export_keys_apart(src, &raw.export_recipients, backup_keys, to_backup_keys)?;
    Ok(DsrConfig {
        export_to_backup_keys: to_backup_keys,
        deliver_to_subject: raw.deliver_to_subject.unwrap_or(false),
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
        verify_within: raw
            .verify_within
            .as_ref()
            .map(|d| src.duration(d, "dsr.verify_within"))
            .transpose()?,
        export_max_bytes: match raw.export_max_bytes {
            Some(b) if *b.get_ref() == 0 || *b.get_ref() > 1 << 40 => {
                return Err(src.error_at(
                    b.span(),
                    "dsr.export_max_bytes must be between 1 and 1099511627776 (1 TiB)",
                ))
            }
            Some(b) => b.into_inner(),
            None => 2 << 30,
        },
    })
}

/// Exports are opened by the DPO (and handed on); backups by whoever restores.
/// An export key that is also a backup key would let the one open the other,
/// so it is refused unless `dsr.export_to_backup_keys` accepts it. (No export
/// key at all is not refused here: retention and backups need none, and an
/// export then fails, loudly, naming the setting; `lethe check` warns.)
fn export_keys_apart(
    src: &SourceFile,
    export: &[Spanned<String>],
    backup_keys: &[String],
    allowed: bool,
) -> Result<()> {
    if allowed {
        return Ok(());
    }
    if let Some(k) = export
        .iter()
        .find(|k| backup_keys.iter().any(|b| same_age_key(k.get_ref(), b)))
    {
        return Err(src.error_at(
            k.span(),
            format!(
                "dsr.export_recipients: `{}` is also in backup.recipients, so whoever opens an \
                 export could open every backup; give exports a key of their own \
                 (age-keygen), or set dsr.export_to_backup_keys = true to accept this",
                k.get_ref()
            ),
        ));
    }
    Ok(())
}

/// Two spellings of one age public key (Bech32 is case-insensitive).
pub fn same_age_key(a: &str, b: &str) -> bool {
    a.trim().eq_ignore_ascii_case(b.trim())
}

/// The key naming a store's URL: `object_store.url`, but `audit.anchor_url` itself.
fn url_key(section: &str) -> String {
    if section.starts_with("audit.") {
        section.to_string()
    } else {
        format!("{section}.url")
    }
}

pub(super) fn load_object_store(
    src: &SourceFile,
    section: &str,
    raw: RawObjectStore,
    dir: &Path,
) -> Result<ObjectStoreConfig> {
    let credentials_env = match (raw.access_key_id_env, raw.secret_access_key_env) {
        (Some(id), Some(secret)) => Some((id, secret)),
        (None, None) => None,
        _ => {
            return Err(src.error_at(
                raw.url.span(),
                format!(
                    "{section}: set both access_key_id_env and secret_access_key_env, or neither"
                ),
            ))
        }
    };
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
            format!(
                "{} `{url}` must be s3://BUCKET[/PREFIX] or file://PATH",
                url_key(section)
            ),
        ));
    };
    Ok(ObjectStoreConfig {
        url,
        endpoint: raw.endpoint,
        region: raw.region,
        path_style: raw.path_style,
        upload_concurrency: src.count(
            raw.upload_concurrency,
            &format!("{section}.upload_concurrency"),
            1..=64,
            4,
        )?,
        credentials_env,
    })
}

/// Anchors are kept 7 years by default (2557 days): the audit log's retention.
pub const DEFAULT_ANCHOR_RETENTION: Duration = Duration::from_secs(2557 * 86_400);

pub(super) fn load_audit(src: &SourceFile, raw: RawAudit, dir: &Path) -> Result<AuditConfig> {
    let anchor_url = raw
        .anchor_url
        .map(|url| {
            let store = RawObjectStore {
                url,
                endpoint: raw.anchor_endpoint,
                region: raw.anchor_region,
                path_style: raw.anchor_path_style,
                upload_concurrency: None,
                access_key_id_env: None,
                secret_access_key_env: None,
            };
            load_object_store(src, "audit.anchor_url", store, dir)
        })
        .transpose()?;
    let anchor_retention = match &raw.anchor_retention {
        Some(s) => src.duration_in(
            s,
            "audit.anchor_retention",
            Duration::from_secs(86_400)..=MAX_DURATION,
        )?,
        None => DEFAULT_ANCHOR_RETENTION,
    };
    Ok(AuditConfig {
        signing_key: SecretSource {
            env: raw
                .signing_key_env
                .unwrap_or_else(|| ENV_AUDIT_SIGNING_KEY.to_string()),
            file: raw.signing_key_file.map(|f| dir.join(f)),
        },
        anchor_url,
        anchor_retention,
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

/// `[database]` and `[store]`: URLs (environment first, never a password in
/// the file), SQLite paths resolved against the config folder, pool sizes.
pub(super) fn load_database_and_store(
    src: &SourceFile,
    database: RawDatabase,
    store: Option<RawStore>,
    dir: &Path,
) -> Result<(DatabaseConfig, StoreConfig)> {
    let database_url = match env_nonempty(ENV_DATABASE_URL) {
        Some(url) => url,
        None => {
            reject_password(src, &database.url, "database.url", ENV_DATABASE_URL)?;
            database.url.get_ref().clone()
        }
    };
    let database_url = resolve_sqlite_url(&database_url, dir);
    check_db_url(src, &database.url, &database_url, "database.url")?;

    let store = store.unwrap_or(RawStore {
        url: None,
        max_connections: None,
    });
    let store_url = match (env_nonempty(ENV_STORE_URL), &store.url) {
        (Some(url), _) => resolve_sqlite_url(&url, dir),
        (None, Some(url)) => {
            reject_password(src, url, "store.url", ENV_STORE_URL)?;
            let resolved = resolve_sqlite_url(url.get_ref(), dir);
            check_db_url(src, url, &resolved, "store.url")?;
            resolved
        }
        (None, None) => database_url.clone(),
    };

    let database_max_connections = src.count(
        database.max_connections,
        "database.max_connections",
        1..=1000,
        8,
    )?;
    let store_max_connections =
        src.count(store.max_connections, "store.max_connections", 1..=1000, 8)?;
    Ok((
        DatabaseConfig {
            url: database_url,
            max_connections: database_max_connections,
            retention_role: database.retention_role,
        },
        StoreConfig {
            url: store_url,
            max_connections: store_max_connections,
        },
    ))
}

/// `[breach]`: reminder marks before each party's deadline (48 h, 24 h, 6 h by default).
pub(super) fn load_breach(src: &SourceFile, raw: RawBreach) -> Result<BreachConfig> {
    Ok(BreachConfig {
        reminders: match &raw.reminders {
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
    })
}
