//! `backup restore ID --to URL`. The erasure ledger is re-applied before the
//! restored database becomes visible, and a restore that fails leaves nothing:
//! SQLite is restored into a 0600 temporary file beside the target and renamed
//! into place (never over an existing file) only after the ledger is applied;
//! PostgreSQL: a new database is restored and re-applied under a temporary
//! name and renamed to the target at the end (dropped on failure); an existing
//! empty database is restored and re-applied in place under a lock, and on
//! failure emptied of what the restore added (never dropped).

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{json, Value};
use sqlx::{Connection, Executor, PgConnection};

use super::{find, identity, restore_into_file, restore_into_pg, source, Manifest};
use crate::appdb::quote_ident as q;
use crate::archive::Decoded;
use crate::context::Context;
use crate::dsr::{LedgerReapply, ReapplyReport};
use crate::error::{Error, Result};
use crate::store::BackupRecord;
use source::Db;

/// Into an empty PostgreSQL database (created when absent) or a new SQLite file.
pub async fn restore(ctx: &Context, id: &str, to: &str) -> Result<Value> {
    let b = find(ctx, id).await?;
    let m = Manifest::parse(&b.manifest, &format!("the manifest of backup {id}"))?;
    if m.physical.is_some() {
        return Err(Error::Usage(format!(
            "backup {id} is a physical base backup: restore it with --to-dir DIR [--to-time T]"
        )));
    }
    let target = Db::from_url(to)?;
    if target.kind() != m.database.kind {
        return Err(Error::Usage(format!(
            "backup {id} is a {kind} backup; restore it into a {kind} URL",
            kind = m.database.kind
        )));
    }
    // Everything that can be refused is refused before anything is written.
    identity(&ctx.config)?;
    let ledger = LedgerReapply::prepare(ctx).await?.for_backup(b.created_at);
    let started = Instant::now();
    let (decoded, report) = match &target {
        Db::Sqlite(path) => restore_sqlite(ctx, &b, to, path, &ledger).await?,
        Db::Postgres(url) => restore_pg(ctx, &b, url, &ledger).await?,
    };
    Ok(json!({
        "id": b.id, "restored_to": crate::config::redact_url(to), "raw_bytes": decoded.raw_bytes,
        "restore_ms": started.elapsed().as_millis() as u64, "erasures_reapplied": report.reapplied,
        "rectifications_reapplied": report.rectified, "corrections_skipped": report.corrections_skipped,
        "org_erasures_reapplied": report.reapplied_in_orgs,
        "subjects_held": report.subjects_held, "rows_kept_for_holds": report.rows_kept_for_holds,
        "orgs_deleted_again": report.orgs_deleted_again, "org_rows_deleted": report.org_rows_deleted,
        "orgs_held": report.orgs_held,
    }))
}

/// An SQLite target must be a file: `:memory:` would vanish with the process
/// (and SQLite would write a plaintext file of that name instead).
fn sqlite_file(to: &str, path: &Path) -> Result<()> {
    let p = path.to_string_lossy();
    let query = to.split_once('?').map_or("", |(_, q)| q);
    let memory = p.contains(":memory:")
        || p.starts_with("file:")
        || query
            .split('&')
            .any(|kv| kv.eq_ignore_ascii_case("mode=memory"));
    if p.is_empty() || memory || p.ends_with('/') {
        return Err(Error::Usage(format!(
            "`{to}` is not a file: restore into a new file, e.g. --to sqlite://restored.db"
        )));
    }
    Ok(())
}

async fn restore_sqlite(
    ctx: &Context,
    b: &BackupRecord,
    to: &str,
    path: &Path,
    ledger: &LedgerReapply,
) -> Result<(Decoded, ReapplyReport)> {
    sqlite_file(to, path)?;
    let exists = || {
        Error::Usage(format!(
            "{} exists; restore into a new file",
            path.display()
        ))
    };
    if path.symlink_metadata().is_ok() {
        return Err(exists());
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .ok_or_else(|| Error::Usage(format!("`{to}` names no file")))?;
    // Beside the target, so the final rename is atomic; tempfile creates it 0600.
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.restore-"))
        .suffix(".tmp")
        .tempfile_in(&dir)
        .map_err(|e| {
            Error::Usage(format!(
                "cannot create the restored database in {}: {e}",
                dir.display()
            ))
        })?;
    let file = tmp
        .as_file()
        .try_clone()
        .map_err(|e| Error::io("opening the restored database", e))?;
    let decoded = restore_into_file(ctx, b, file).await?;
    let tmp_url = format!("sqlite://{}", tmp.path().display());
    let report = ledger.apply(ctx, &tmp_url).await?;
    if report.reapplied + report.reapplied_in_orgs + report.rectified > 0
        || !report.orgs_deleted_again.is_empty()
    {
        // Deleted rows and replaced values stay readable in free pages until the file is rewritten.
        let mut conn = sqlx::SqliteConnection::connect(&tmp_url).await?;
        // The rewrite's scratch copy stays in memory, not in a file under /tmp.
        conn.execute("PRAGMA temp_store = MEMORY").await?;
        conn.execute("VACUUM").await?;
        conn.close().await?;
    }
    tmp.as_file()
        .sync_all()
        .map_err(|e| Error::io("writing the restored database", e))?;
    // No-clobber: a file that appeared meanwhile (a concurrent restore) is never replaced;
    // on failure the temporary file is removed with `tmp`.
    tmp.persist_noclobber(path).map_err(|e| {
        if e.error.kind() == std::io::ErrorKind::AlreadyExists {
            exists()
        } else {
            Error::io(
                format!("renaming the restored database to {}", path.display()),
                e.error,
            )
        }
    })?;
    if let Err(e) = std::fs::File::open(&dir).and_then(|d| d.sync_all()) {
        tracing::warn!(error = %e, "could not sync the folder of the restored database");
    }
    Ok((decoded, report))
}

/// Serialises restores into one PostgreSQL database (advisory locks are per database).
const RESTORE_LOCK: i64 = 0x6c65_7468_6572_7374;

async fn restore_pg(
    ctx: &Context,
    b: &BackupRecord,
    url: &str,
    ledger: &LedgerReapply,
) -> Result<(Decoded, ReapplyReport)> {
    if database_exists(url).await? {
        restore_pg_existing(ctx, b, url, ledger).await
    } else {
        restore_pg_new(ctx, b, url, ledger).await
    }
}

/// A new database: restored and re-applied under a temporary name, renamed to
/// the target only then (a crash leaves no database of the target's name), and
/// dropped on failure.
async fn restore_pg_new(
    ctx: &Context,
    b: &BackupRecord,
    url: &str,
    ledger: &LedgerReapply,
) -> Result<(Decoded, ReapplyReport)> {
    let (server, name) = maintenance_url(url)?;
    let tmp_name = format!(
        "lethe_restore_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..16]
    );
    let tmp_url = source::pg_create_database(&server, &tmp_name).await?;
    let result = async {
        let decoded = restore_into_pg(ctx, b, &tmp_url).await?;
        let report = ledger.apply(ctx, &tmp_url).await?;
        rename_database(&server, &tmp_name, &name).await?;
        Ok::<_, Error>((decoded, report))
    }
    .await;
    if result.is_err() {
        if let Err(e) = source::pg_drop_database(&server, &tmp_name).await {
            tracing::error!(error = %e, database = %tmp_name, "could not drop the failed restore's database: drop it by hand");
        }
    }
    result
}

/// An existing database: it must be empty; restored and re-applied in place
/// under a lock, and on failure emptied of what the restore added (never dropped).
async fn restore_pg_existing(
    ctx: &Context,
    b: &BackupRecord,
    url: &str,
    ledger: &LedgerReapply,
) -> Result<(Decoded, ReapplyReport)> {
    let mut conn = lock_target(url).await?;
    let tables = source::pg_user_table_count_on(&mut conn).await?;
    if tables > 0 {
        conn.close().await?;
        return Err(Error::Usage(format!(
            "the target database has {tables} tables; restore into an empty database, or name one that does not exist (it is created)"
        )));
    }
    let before = Catalog::snapshot(&mut conn).await?;
    let result = async {
        let decoded = restore_into_pg(ctx, b, url).await?;
        let report = ledger.apply(ctx, url).await?;
        Ok::<_, Error>((decoded, report))
    }
    .await;
    let Err(e) = result else {
        conn.close().await?;
        return result;
    };
    let cleanup = before.remove_new(&mut conn).await;
    let _ = conn.close().await;
    match cleanup {
        Ok(()) => Err(e),
        Err(ce) => Err(Error::Backup(format!(
            "{e} — and removing what the failed restore left in the target failed too: {ce}"
        ))),
    }
}

async fn database_exists(url: &str) -> Result<bool> {
    match PgConnection::connect(url).await {
        Ok(c) => {
            c.close().await?;
            Ok(true)
        }
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("3D000") => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Renames the restored database to the target; refuses if the target appeared meanwhile.
async fn rename_database(server: &str, from: &str, to: &str) -> Result<()> {
    let mut admin = PgConnection::connect(server).await?;
    let sql = format!("ALTER DATABASE {} RENAME TO {}", q(from), q(to));
    let mut tries = 0;
    let r = loop {
        match admin.execute(sql.as_str()).await {
            // The restore's own sessions may take a moment to end on the server.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55006") && tries < 50 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            other => break other,
        }
    };
    admin.close().await?;
    match r {
        Ok(_) => Ok(()),
        // 23505: both renamed at once.
        Err(sqlx::Error::Database(e)) if matches!(e.code().as_deref(), Some("42P04" | "23505")) => Err(Error::Usage(
            format!("the database {to} was created meanwhile (another restore?); restore into a new name"),
        )),
        Err(e) => Err(e.into()),
    }
}

/// The server's maintenance database URL and the target's database name.
fn maintenance_url(url: &str) -> Result<(String, String)> {
    let mut u = url::Url::parse(url)
        .map_err(|e| Error::Usage(format!("`{}`: {e}", crate::config::redact_url(url))))?;
    let name = percent_decode(u.path().trim_start_matches('/'));
    if name.is_empty() {
        return Err(Error::Usage(format!(
            "`{}` names no database",
            crate::config::redact_url(url)
        )));
    }
    u.set_path("/postgres");
    Ok((u.to_string(), name))
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("n={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// A session holding the target's restore lock until it is closed.
async fn lock_target(url: &str) -> Result<PgConnection> {
    let mut conn = PgConnection::connect(url).await?;
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(RESTORE_LOCK)
        .fetch_one(&mut conn)
        .await?;
    if !got {
        conn.close().await?;
        return Err(Error::Usage(format!(
            "another restore into {} is running",
            crate::config::redact_url(url)
        )));
    }
    Ok(conn)
}

/// The objects of a database before a restore, so a failed restore can remove
/// exactly what it added (never what was there).
struct Catalog {
    extensions: Vec<i64>,
    schemas: Vec<i64>,
    relations: Vec<i64>,
    routines: Vec<i64>,
    types: Vec<i64>,
}

/// What the restore added, as DROP statements, one kind at a time, broadest
/// first (CASCADE takes dependants, IF EXISTS skips what a cascade took).
const NEW_OBJECTS: [(&str, Kind); 5] = [
    (
        "SELECT 'DROP EXTENSION IF EXISTS ' || quote_ident(extname) || ' CASCADE'
           FROM pg_extension WHERE NOT (oid::bigint = ANY($1))",
        Kind::Extensions,
    ),
    (
        "SELECT 'DROP SCHEMA IF EXISTS ' || quote_ident(nspname) || ' CASCADE'
           FROM pg_namespace WHERE NOT (oid::bigint = ANY($1))",
        Kind::Schemas,
    ),
    (
        "SELECT 'DROP ' || CASE relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                    WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE' WHEN 'c' THEN 'TYPE' ELSE 'TABLE' END
                || ' IF EXISTS ' || oid::regclass::text || ' CASCADE'
           FROM pg_class WHERE NOT (oid::bigint = ANY($1)) AND relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'c')",
        Kind::Relations,
    ),
    (
        "SELECT 'DROP ' || CASE typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END
                || ' IF EXISTS ' || oid::regtype::text || ' CASCADE'
           FROM pg_type WHERE NOT (oid::bigint = ANY($1)) AND typtype IN ('b', 'd', 'e', 'r')
            AND typcategory <> 'A'",
        Kind::Types,
    ),
    (
        "SELECT 'DROP ' || CASE prokind WHEN 'a' THEN 'AGGREGATE' ELSE 'ROUTINE' END
                || ' IF EXISTS ' || oid::regprocedure::text || ' CASCADE'
           FROM pg_proc WHERE NOT (oid::bigint = ANY($1))",
        Kind::Routines,
    ),
];

#[derive(Clone, Copy)]
enum Kind {
    Extensions,
    Schemas,
    Relations,
    Types,
    Routines,
}

async fn oids(conn: &mut PgConnection, catalog: &str) -> Result<Vec<i64>> {
    Ok(
        sqlx::query_scalar(&format!("SELECT oid::bigint FROM {catalog}"))
            .fetch_all(conn)
            .await?,
    )
}

impl Catalog {
    async fn snapshot(conn: &mut PgConnection) -> Result<Catalog> {
        Ok(Catalog {
            extensions: oids(conn, "pg_extension").await?,
            schemas: oids(conn, "pg_namespace").await?,
            relations: oids(conn, "pg_class").await?,
            routines: oids(conn, "pg_proc").await?,
            types: oids(conn, "pg_type").await?,
        })
    }

    fn before(&self, kind: Kind) -> &[i64] {
        match kind {
            Kind::Extensions => &self.extensions,
            Kind::Schemas => &self.schemas,
            Kind::Relations => &self.relations,
            Kind::Types => &self.types,
            Kind::Routines => &self.routines,
        }
    }

    async fn remove_new(&self, conn: &mut PgConnection) -> Result<()> {
        for (query, kind) in NEW_OBJECTS {
            let drops: Vec<String> = sqlx::query_scalar(query)
                .bind(self.before(kind))
                .fetch_all(&mut *conn)
                .await?;
            for d in drops {
                conn.execute(d.as_str()).await?;
            }
        }
        let left: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM pg_class WHERE NOT (oid::bigint = ANY($1)))
                  + (SELECT count(*) FROM pg_namespace WHERE NOT (oid::bigint = ANY($2)))",
        )
        .bind(&self.relations)
        .bind(&self.schemas)
        .fetch_one(&mut *conn)
        .await?;
        if left > 0 {
            return Err(Error::Backup(format!(
                "{left} relations or schemas the restore created are still there; drop them by hand"
            )));
        }
        Ok(())
    }
}
