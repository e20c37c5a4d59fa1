//! `lethe init`: a starter config on embedded backends (SQLite, local folders).

use super::out::outln;
use std::path::Path;

use anyhow::{Context as _, Result};

use crate::error::Error;

/// The default job catalog (`jobs/` in the repository), embedded.
pub const STARTER_JOBS: &[(&str, &str)] = &[
    (
        "keys.rotate.toml",
        include_str!("../../jobs/keys.rotate.toml"),
    ),
    (
        "keys.reencrypt.toml",
        include_str!("../../jobs/keys.reencrypt.toml"),
    ),
    (
        "breach.tick.toml",
        include_str!("../../jobs/breach.tick.toml"),
    ),
    (
        "dsr.process.toml",
        include_str!("../../jobs/dsr.process.toml"),
    ),
    (
        "dsr.sla_report.toml",
        include_str!("../../jobs/dsr.sla_report.toml"),
    ),
    ("org.purge.toml", include_str!("../../jobs/org.purge.toml")),
    (
        "backup.create.toml",
        include_str!("../../jobs/backup.create.toml"),
    ),
    (
        "backup.verify.toml",
        include_str!("../../jobs/backup.verify.toml"),
    ),
    (
        "backup.prune.toml",
        include_str!("../../jobs/backup.prune.toml"),
    ),
    (
        "backup.rpo_check.toml",
        include_str!("../../jobs/backup.rpo_check.toml"),
    ),
    (
        "retention.purge.toml",
        include_str!("../../jobs/retention.purge.toml"),
    ),
    (
        "mail.flush.toml",
        include_str!("../../jobs/mail.flush.toml"),
    ),
    (
        "runner.prune.toml",
        include_str!("../../jobs/runner.prune.toml"),
    ),
    (
        "audit.anchor.toml",
        include_str!("../../jobs/audit.anchor.toml"),
    ),
];

pub const STARTER_CONFIG: &str = r#"# Lethe configuration. Relative paths are relative to this file.
# Secrets never go here: they come from environment variables or files named below.

[database]
# The application database Lethe keeps promises about.
# PostgreSQL: url = "postgres://lethe@db.internal/app" and the password in $LETHE_DATABASE_URL.
url = "sqlite://app.db"
# max_connections = 8       # one pool per process, shared by jobs and the DSR API
# retention_role = "lethe"  # PostgreSQL: the only role an append_only table's guard lets
                            # DELETE (default: the role url connects as)

[store]
# Lethe's own state (queue, audit chain, outbox). Defaults to database.url;
# on PostgreSQL it lives in schema `lethe`.
url = "sqlite://lethe.db"

[runner]
workers = 2
poll_interval = "1s"
lease = "60s"            # a run whose worker stops renewing this is rescued
retry_base = "30s"       # backoff: retry_base * 2^(attempt-1), jittered, up to retry_max
retry_max = "1h"
catch_up = "latest"      # after downtime: run the latest missed fire ("latest") or none ("skip")
drain_timeout = "30s"    # SIGTERM waits this long for running jobs
jobs_dir = "jobs"

[http]
listen = "127.0.0.1:8080"   # /healthz /readyz /metrics
# max_concurrency = 8       # DSR API requests at once; more wait queue_timeout, then 503 + Retry-After
# queue_timeout = "5s"

[mail]
from = "Lethe <lethe@example.com>"
transport = "file"          # "file" writes .eml files to `dir`; "smtp" uses [mail.smtp]
dir = "mail"
max_attempts = 10
timezone = "UTC"            # IANA zone for dates in mail (UTC is shown alongside), e.g. "Europe/Berlin"
# [mail.smtp]
# host = "smtp.example.com"
# port = 587
# tls = "starttls"          # "none", "starttls" or "tls"
# username = "lethe"
# password_env = "LETHE_SMTP_PASSWORD"   # or password_file = "/run/secrets/smtp"

[mail.recipients]
dpo = ["dpo@example.com"]
ops = ["ops@example.com"]

[object_store]
# "file://backups" (relative to this file) or "s3://bucket/prefix"; S3 credentials
# come from the usual AWS environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, …).
url = "file://objects"
# endpoint = "https://<account>.r2.cloudflarestorage.com"   # S3-compatible stores
# region = "auto"
# path_style = false
# upload_concurrency = 4

# The application's own stores, where files its rows reference live (a data map
# entry names them: objects = [{ column = "storage_key", store = "documents" }]).
# [object_stores.documents]
# url = "s3://app-uploads/documents"
# region = "eu-central-1"
# access_key_id_env = "DOCUMENTS_AWS_ACCESS_KEY_ID"        # this store's own credentials
# secret_access_key_env = "DOCUMENTS_AWS_SECRET_ACCESS_KEY"

# Files no row references, by key template and age:
# [[object_retention]]
# store = "documents"
# keys = "frames/{org}/{subject}/"
# class = "identity_frames"
# retention = ["90d", "org_closed+30d"]

[backup]
# age public keys that can decrypt backups (keep the matching secret keys offline).
recipients = []
# The identity used by verify and restore: $LETHE_AGE_IDENTITY or this file.
# identity_file = "/run/secrets/age-identity.txt"
zstd_level = 3
zstd_threads = 2
part_size_mib = 16
rpo = "1h"
# rto = "2h"                 # restore drills slower than this mail ops (the promised recovery time)
keep = { last = 3, hourly = 24, daily = 7, weekly = 4, monthly = 12, yearly = 3 }
# PostgreSQL: where backup.verify restores its drills. Use a server apart from
# the application's: a drill competes with production for I/O, memory and disk.
# scratch_url = "postgres://lethe@drills.internal:5432/postgres"
# allow_scratch_on_app_server = false   # true: drills on the application's own server
# verify_jobs = 1            # >1: pg_restore --jobs from a temporary file as large as the dump

[dsr]
default_deadline = "30d"     # where no jurisdiction rule applies (gdpr, uk_gdpr, ccpa, uu_pdp are built in)
at_risk = "7d"               # fewer days left than this: at risk
export_link_ttl = "7d"       # presigned export links expire
report_period = "7d"
# verify_within = "30d"      # reject requests whose identity is still unchecked this long after receipt
# age keys export archives are encrypted to: the DPO's own, never a backup key
# (age-keygen -o dpo-export.key; keep the secret key with the DPO).
# export_recipients = ["age1..."]
# deliver_to_subject = true  # also mail the subject a link to a passphrase-protected ZIP
#                            # and, separately, its passphrase (needs an S3 object store)
# The keyed-HMAC key for pseudonyms and the erasure ledger: $LETHE_PSEUDONYM_KEY or a file.
# pseudonym_key_file = "/run/secrets/pseudonym-key"

[keys]
provider = "local"           # "local" (keyring file below) or "aws" (AWS KMS)
keyring_file = "keyring.json"
# kms_endpoint = "https://kms.eu-central-1.amazonaws.com"   # or a KMS-compatible endpoint
# region = "eu-central-1"
dek_rotation = "90d"
kek_rotation = "365d"
shred_after = "30d"          # closed orgs' keys are shredded this long after closure
concurrency = 8              # KMS calls in flight

[breach]
reminders = ["48h", "24h", "6h"]

[audit]
# `lethe audit export --signed` and `audit.anchor` sign with this key.
signing_key_env = "AUDIT_SIGNING_KEY"
# signing_key_file = "/run/secrets/audit-signing-key"
# Where `audit.anchor` writes the chain's head every 15 minutes. A folder is
# weak (whoever owns this host can rewrite it); in production use an S3 bucket
# created with Object Lock: each anchor is kept in COMPLIANCE mode, which
# nobody, not even the bucket's owner, can shorten or delete.
anchor_url = "file://anchors"
# anchor_url = "s3://evidence-bucket/lethe-anchors"
# anchor_endpoint = "https://s3.eu-central-1.amazonaws.com"
# anchor_region = "eu-central-1"
# anchor_path_style = false
# anchor_retention = "2557d"   # 7 years

# Where subjects, orgs and memberships live in the application database.
# [app]
# subjects = { table = "users", id = "id", email = "email" }
# orgs = { table = "orgs", id = "id", closed_at = "closed_at" }
# memberships = { table = "memberships", org = "org_id", subject = "user_id", role = "role", owner_roles = ["owner"] }

# The data map: one entry per application table holding personal or customer data.
# retention: "90d", "12w", "6mo", "7y", "org_closed+1y", "none", or a list of these.
# erasure: "delete" (default), "anonymize" (with `anonymize = { col = "null" | "hmac" | "fixed:VALUE" }`),
#          or "retain" (with `legal_basis`).
# [[data_map]]
# table = "api_request_logs"
# class = "api_logs"
# timestamp = "created_at"
# org = "org_id"
# subject = "user_id"
# retention = "90d"
# erasure = "delete"
# export = true
#
# The application's own audit log: append_only = true makes `lethe check` demand
# its guard (triggers refusing UPDATE, TRUNCATE and DELETE but Lethe's retention):
# `lethe app guard install --table audit_logs` prints it, `--apply` applies it.
# [[data_map]]
# table = "audit_logs"
# class = "security_audit"
# timestamp = "created_at"
# retention = "7y"
# erasure = "retain"
# legal_basis = "security audit trail (GDPR Art. 32)"
# append_only = true
"#;

/// Writes `lethe.toml` (the given text) and the starter jobs into `dir`.
pub fn write_starter(
    dir: &Path,
    config_text: &str,
    force: bool,
) -> Result<Vec<std::path::PathBuf>> {
    let jobs_dir = dir.join("jobs");
    std::fs::create_dir_all(&jobs_dir)
        .with_context(|| format!("creating {}", jobs_dir.display()))?;
    let mut files = vec![(dir.join("lethe.toml"), config_text)];
    files.extend(
        STARTER_JOBS
            .iter()
            .map(|(name, text)| (jobs_dir.join(name), *text)),
    );
    if !force {
        if let Some((p, _)) = files.iter().find(|(p, _)| p.exists()) {
            return Err(Error::Usage(format!(
                "{} already exists; pass --force to overwrite",
                p.display()
            ))
            .into());
        }
    }
    for (p, text) in &files {
        std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(files.into_iter().map(|(p, _)| p).collect())
}

pub fn run(dir: &Path, force: bool) -> Result<i32> {
    for p in write_starter(dir, STARTER_CONFIG, force)? {
        outln!("wrote {}", p.display());
    }
    outln!("next: edit lethe.toml, then `lethe migrate && lethe check`");
    Ok(0)
}
