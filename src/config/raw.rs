//! The TOML shapes as written, before validation: every field optional or
//! spanned so errors can point at the line.

use serde::Deserialize;
use toml::Spanned;

use super::{api_keys, data_map, CatchUp, KeepPolicy, KmsProvider, MailTransportKind, SmtpTls};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) database: RawDatabase,
    #[serde(default)]
    pub(super) store: Option<RawStore>,
    #[serde(default)]
    pub(super) runner: RawRunner,
    #[serde(default)]
    pub(super) http: RawHttp,
    pub(super) mail: RawMail,
    #[serde(default)]
    pub(super) audit: RawAudit,
    pub(super) app: Option<data_map::RawApp>,
    #[serde(default)]
    pub(super) data_map: Vec<data_map::RawEntry>,
    pub(super) object_store: Option<RawObjectStore>,
    /// The application's own stores, where its rows' files live.
    #[serde(default)]
    pub(super) object_stores: std::collections::BTreeMap<String, RawObjectStore>,
    #[serde(default)]
    pub(super) object_retention: Vec<super::object_retention::RawObjectRetention>,
    #[serde(default)]
    pub(super) backup: RawBackup,
    #[serde(default)]
    pub(super) dsr: RawDsr,
    #[serde(default)]
    pub(super) keys: RawKeys,
    #[serde(default)]
    pub(super) breach: RawBreach,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBreach {
    pub(super) reminders: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKeys {
    pub(super) provider: Option<KmsProvider>,
    pub(super) keyring_file: Option<String>,
    pub(super) kms_endpoint: Option<String>,
    pub(super) region: Option<String>,
    pub(super) dek_rotation: Option<Spanned<String>>,
    pub(super) kek_rotation: Option<Spanned<String>>,
    pub(super) shred_after: Option<Spanned<String>>,
    pub(super) deletion_window_days: Option<Spanned<i32>>,
    pub(super) concurrency: Option<Spanned<usize>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDsr {
    pub(super) default_deadline: Option<Spanned<String>>,
    pub(super) at_risk: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) export_recipients: Vec<Spanned<String>>,
    pub(super) export_link_ttl: Option<Spanned<String>>,
    pub(super) pseudonym_key_env: Option<String>,
    pub(super) pseudonym_key_file: Option<String>,
    pub(super) report_period: Option<Spanned<String>>,
    pub(super) export_prefix: Option<String>,
    pub(super) verify_within: Option<Spanned<String>>,
    pub(super) export_max_bytes: Option<Spanned<u64>>,
    pub(super) export_to_backup_keys: Option<bool>,
    pub(super) deliver_to_subject: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawObjectStore {
    pub(super) url: Spanned<String>,
    pub(super) endpoint: Option<String>,
    pub(super) region: Option<String>,
    #[serde(default)]
    pub(super) path_style: bool,
    pub(super) upload_concurrency: Option<Spanned<usize>>,
    /// Names of the environment variables holding this store's own
    /// credentials (default: the AWS SDK's usual chain).
    pub(super) access_key_id_env: Option<String>,
    pub(super) secret_access_key_env: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackup {
    #[serde(default)]
    pub(super) recipients: Vec<Spanned<String>>,
    pub(super) identity_env: Option<String>,
    pub(super) identity_file: Option<String>,
    pub(super) zstd_level: Option<Spanned<i32>>,
    pub(super) zstd_threads: Option<Spanned<u32>>,
    pub(super) part_size_mib: Option<Spanned<u64>>,
    pub(super) prefix: Option<String>,
    pub(super) wal_prefix: Option<String>,
    pub(super) rpo: Option<Spanned<String>>,
    pub(super) keep: Option<KeepPolicy>,
    pub(super) scratch_url: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) allow_scratch_on_app_server: bool,
    pub(super) verify_jobs: Option<Spanned<u32>>,
    pub(super) rto: Option<Spanned<String>>,
    pub(super) pg_bin: Option<String>,
    pub(super) mode: Option<Spanned<String>>,
    pub(super) pitr_window: Option<Spanned<String>>,
    pub(super) server_user: Option<String>,
    pub(super) lethe_bin: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDatabase {
    pub(super) url: Spanned<String>,
    pub(super) max_connections: Option<Spanned<u32>>,
    pub(super) retention_role: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    pub(super) url: Option<Spanned<String>>,
    pub(super) max_connections: Option<Spanned<u32>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRunner {
    pub(super) workers: Option<Spanned<usize>>,
    pub(super) poll_interval: Option<Spanned<String>>,
    pub(super) lease: Option<Spanned<String>>,
    pub(super) retry_base: Option<Spanned<String>>,
    pub(super) retry_max: Option<Spanned<String>>,
    pub(super) catch_up: Option<CatchUp>,
    pub(super) drain_timeout: Option<Spanned<String>>,
    pub(super) jobs_dir: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    pub(super) listen: Option<Spanned<String>>,
    pub(super) max_concurrency: Option<Spanned<usize>>,
    pub(super) queue_timeout: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) api_key_hashes: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) api_keys: Vec<api_keys::RawApiKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMail {
    pub(super) from: Spanned<String>,
    pub(super) transport: MailTransportKind,
    pub(super) dir: Option<String>,
    pub(super) smtp: Option<RawSmtp>,
    pub(super) max_attempts: Option<Spanned<u32>>,
    pub(super) retry_base: Option<Spanned<String>>,
    pub(super) batch_size: Option<Spanned<u32>>,
    pub(super) timezone: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) recipients: RawRecipients,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSmtp {
    pub(super) host: String,
    pub(super) port: Option<u16>,
    pub(super) tls: Option<SmtpTls>,
    pub(super) username: Option<String>,
    pub(super) password_env: Option<String>,
    pub(super) password_file: Option<String>,
    pub(super) timeout: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRecipients {
    #[serde(default)]
    pub(super) dpo: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) ops: Vec<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    pub(super) signing_key_env: Option<String>,
    pub(super) signing_key_file: Option<String>,
    /// Where `audit.anchor` writes chain heads: `s3://bucket/prefix` or `file://DIR`.
    pub(super) anchor_url: Option<Spanned<String>>,
    pub(super) anchor_endpoint: Option<String>,
    pub(super) anchor_region: Option<String>,
    #[serde(default)]
    pub(super) anchor_path_style: bool,
    pub(super) anchor_retention: Option<Spanned<String>>,
}

// ---- loading ---------------------------------------------------------------
