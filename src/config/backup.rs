//! `[backup]`: keys, compression, retention, placement of drills, and the
//! mode (logical dumps or physical base backups with the WAL archive).

use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::raw::*;
use super::source::*;
use super::*;
use crate::error::Result;

/// `backup.mode`: physical base backups need PostgreSQL.
fn backup_mode(
    src: &SourceFile,
    mode: Option<&Spanned<String>>,
    on_postgres: bool,
) -> Result<BackupMode> {
    Ok(match mode {
        None => BackupMode::Logical,
        Some(m) => match m.get_ref().as_str() {
            "logical" => BackupMode::Logical,
            "physical" if on_postgres => BackupMode::Physical,
            "physical" => {
                return Err(src.error_at(
                    m.span(),
                    "backup.mode = \"physical\" takes base backups of a PostgreSQL cluster; \
                     this database is not PostgreSQL: use \"logical\"",
                ))
            }
            other => {
                return Err(src.error_at(
                    m.span(),
                    format!("backup.mode `{other}`: use \"logical\" (dumps) or \"physical\" (base backups + WAL)"),
                ))
            }
        },
    })
}

fn check_recipients(src: &SourceFile, recipients: &[Spanned<String>]) -> Result<()> {
    for r in recipients {
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
    Ok(())
}

pub(super) fn load_backup(
    src: &SourceFile,
    raw: RawBackup,
    dir: &Path,
    on_postgres: bool,
) -> Result<BackupConfig> {
    check_recipients(src, &raw.recipients)?;
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
        wal_prefix: raw.wal_prefix.unwrap_or_else(|| "wal/".to_string()),
        pitr_window: match &raw.pitr_window {
            Some(w) => src.duration(w, "backup.pitr_window")?,
            None => Duration::from_secs(7 * 86_400),
        },
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
        allow_scratch_on_app_server: raw.allow_scratch_on_app_server,
        verify_jobs: src.count(raw.verify_jobs, "backup.verify_jobs", 1..=64, 1)?,
        rto: raw
            .rto
            .as_ref()
            .map(|r| src.duration(r, "backup.rto"))
            .transpose()?,
        pg_bin: raw.pg_bin.map(PathBuf::from),
        mode: backup_mode(src, raw.mode.as_ref(), on_postgres)?,
        server_user: raw.server_user,
        lethe_bin: raw.lethe_bin.map(|b| dir.join(b)),
    })
}
