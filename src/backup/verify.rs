//! `backup verify`: the manifest checked (typed, complete, the same in the
//! object store as in the catalog), then the backup downloaded, decrypted,
//! decompressed, hash-checked, restored into a scratch database, and its row
//! counts compared with the manifest's. The restore time is the RTO evidence.

use std::collections::BTreeMap;
use std::time::Instant;

use super::scratch::{self, ScratchDb};
use super::{find, restore_into_file, restore_into_pg, source, Manifest};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::store::BackupRecord;
use source::Db;

#[derive(Debug, serde::Serialize)]
pub struct VerifyReport {
    pub id: String,
    pub ok: bool,
    pub restore_ms: u64,
    pub tables: usize,
    pub mismatches: Vec<String>,
    pub error: Option<String>,
    /// Scratch databases of earlier drills (crashed, timed out) dropped first.
    pub scratch_swept: Vec<String>,
    /// `backup.rto` in ms, and whether this restore met it (`None`: no RTO set, or no restore).
    pub rto_ms: Option<u64>,
    pub rto_met: Option<bool>,
}

/// The catalog's manifest of `b`, checked against the copy beside the backup
/// and against the catalog row: a missing, empty or altered field fails.
async fn checked_manifest(ctx: &Context, b: &BackupRecord) -> Result<Manifest> {
    let catalog = Manifest::parse(
        &b.manifest,
        &format!("the catalog's manifest of backup {}", b.id),
    )?;
    let bytes = ctx.object_store().await?.get_bytes(&b.manifest_key).await?;
    let stored = Manifest::from_slice(
        &bytes,
        &format!("the manifest {} in the object store", b.manifest_key),
    )?;
    if stored != catalog {
        return Err(Error::Backup(format!(
            "the manifest {} in the object store differs from the catalog's copy (altered?)",
            b.manifest_key
        )));
    }
    if catalog.id != b.id
        || catalog.object != b.object_key
        || catalog.sha256 != b.sha256
        || catalog.stored_bytes as i64 != b.stored_bytes
        || catalog.raw_bytes as i64 != b.raw_bytes
    {
        return Err(Error::Backup(format!(
            "the manifest of backup {} disagrees with its catalog row (id, object, sha256 or sizes)",
            b.id
        )));
    }
    Ok(catalog)
}

/// On PostgreSQL, drops the scratch databases earlier drills left (crashed,
/// killed, timed out); returns their names.
async fn sweep_leftovers(ctx: &Context) -> Result<Vec<String>> {
    match Db::from_url(&ctx.config.database.url)? {
        Db::Postgres(app_url) => {
            let (server, _) = scratch::server(&ctx.config, &app_url).await?;
            Ok(scratch::sweep(&server).await)
        }
        Db::Sqlite(_) => Ok(Vec::new()),
    }
}

/// Restores `b` into a scratch database and counts its rows.
async fn scratch_restore(
    ctx: &Context,
    b: &BackupRecord,
    m: &Manifest,
) -> Result<BTreeMap<String, i64>> {
    let decoded_and_counts = match Db::from_url(&ctx.config.database.url)? {
        Db::Postgres(app_url) => {
            let (server, _) = scratch::server(&ctx.config, &app_url).await?;
            let db = ScratchDb::create(&server).await?;
            let r = async {
                let d = restore_into_pg(ctx, b, db.url()).await?;
                let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(db.url()).await?;
                Ok::<_, Error>((d, source::pg_row_counts(&mut conn).await?))
            }
            .await;
            if let Err(e) = db.drop_now().await {
                tracing::warn!(error = %e, "could not drop the scratch database; the next drill sweeps it");
            }
            r?
        }
        Db::Sqlite(_) => {
            let dir = tempfile::tempdir().map_err(|e| Error::io("scratch folder", e))?;
            let path = dir.path().join("restore.db");
            let file = std::fs::File::create_new(&path)
                .map_err(|e| Error::io("creating the scratch database", e))?;
            let d = restore_into_file(ctx, b, file).await?;
            (d, source::sqlite_row_counts(&path).await?)
        }
    };
    let (decoded, counts) = decoded_and_counts;
    if decoded.raw_bytes != m.raw_bytes {
        return Err(Error::Backup(format!(
            "the restored dump has {} bytes, the manifest says {}",
            decoded.raw_bytes, m.raw_bytes
        )));
    }
    Ok(counts)
}

/// The drill's report from its outcome: the tables whose row counts differ
/// from the manifest's, or the error that stopped it.
fn report_of(
    id: &str,
    outcome: Result<(usize, Vec<String>)>,
    restore_ms: u64,
    scratch_swept: Vec<String>,
) -> VerifyReport {
    let mut report = VerifyReport {
        id: id.to_string(),
        ok: false,
        restore_ms,
        tables: 0,
        mismatches: vec![],
        error: None,
        scratch_swept,
        rto_ms: None,
        rto_met: None,
    };
    match outcome {
        Ok((tables, mismatches)) => {
            report.ok = mismatches.is_empty();
            (report.tables, report.mismatches) = (tables, mismatches);
        }
        Err(e) => report.error = Some(e.to_string()),
    }
    report
}

/// The tables compared, and those whose row counts differ from the manifest's.
fn mismatches(
    expected: &BTreeMap<String, i64>,
    actual: &BTreeMap<String, i64>,
) -> (usize, Vec<String>) {
    let differ = expected
        .iter()
        .filter(|(t, n)| actual.get(*t) != Some(n))
        .map(|(t, n)| {
            format!(
                "{t}: backup had {n} rows, restore has {}",
                actual.get(t).map_or("none".into(), |a| a.to_string())
            )
        })
        .collect();
    (expected.len(), differ)
}

/// Checks the manifest, downloads, decrypts, decompresses, checks the hash,
/// restores into scratch and compares row counts with the manifest's. The
/// result is stored with `actor`'s evidence.
pub async fn verify(ctx: &Context, id: &str, actor: &str) -> Result<VerifyReport> {
    let b = find(ctx, id).await?;
    // A base backup's drill runs in a server of its own, not in scratch databases.
    let swept = if b.manifest.get("physical").is_some() {
        super::drills::sweep(&ctx.config)
    } else {
        sweep_leftovers(ctx).await?
    };
    let started = Instant::now();
    let outcome = async {
        let m = checked_manifest(ctx, &b).await?;
        if let Some(p) = &m.physical {
            return super::pitr::drill(ctx, &b, p, &m.row_counts).await;
        }
        let actual = scratch_restore(ctx, &b, &m).await?;
        Ok::<_, Error>(mismatches(&m.row_counts, &actual))
    }
    .await;
    let restore_ms = started.elapsed().as_millis() as u64;
    let mut report = report_of(&b.id, outcome, restore_ms, swept);
    report.rto_ms = ctx.config.backup.rto.map(|d| d.as_millis() as u64);
    let mut rto_alert = None;
    if report.ok {
        // The drill is recorded whatever happens here.
        match super::rto::assess(ctx, &report.id, restore_ms).await {
            Ok(judged) => (report.rto_met, rto_alert) = judged,
            Err(e) => tracing::warn!(error = %e, "could not judge the drill against backup.rto"),
        }
    }
    let error_text = report
        .error
        .clone()
        .or_else(|| (!report.mismatches.is_empty()).then(|| report.mismatches.join("; ")));
    let r = &report;
    let event = crate::store::evidence(
        actor,
        if r.ok {
            "backup.verified"
        } else {
            "backup.verify_failed"
        },
        &format!("backup:{id}"),
        serde_json::json!({"restore_ms": r.restore_ms, "tables": r.tables, "mismatches": r.mismatches, "error": r.error,
                           "rto_ms": r.rto_ms, "rto_met": r.rto_met}),
    );
    ctx.store
        .backup_verified(
            &b.id,
            report.ok,
            Some(restore_ms as i64),
            error_text.as_deref(),
            &event,
        )
        .await?;
    super::rto::send(ctx, rto_alert).await?;
    Ok(report)
}
