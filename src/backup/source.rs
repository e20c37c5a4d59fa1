//! Database-specific ends of a backup: PostgreSQL via pg_dump/pg_restore (a
//! consistent snapshot, row counts taken in the same snapshot), SQLite via
//! `VACUUM INTO`. Passwords go to the tools through PGPASSWORD, never argv.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;

use sqlx::{Connection, Executor, Row};

use crate::appdb::quote_ident as q;
use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub enum Db {
    Postgres(String),
    Sqlite(PathBuf),
}

impl Db {
    pub fn from_url(url: &str) -> Result<Db> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Db::Postgres(url.to_string()))
        } else if let Some(rest) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            Ok(Db::Sqlite(PathBuf::from(
                rest.split('?').next().unwrap_or(rest),
            )))
        } else {
            Err(Error::Usage(format!(
                "`{}` is neither postgres:// nor sqlite://",
                crate::config::redact_url(url)
            )))
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Db::Postgres(_) => "postgres",
            Db::Sqlite(_) => "sqlite",
        }
    }
}

/// `pg_dump`/`pg_restore`: the configured folder, else the newest /usr/lib/postgresql/*/bin, else PATH.
pub fn pg_tool(name: &str, configured: Option<&Path>) -> PathBuf {
    if let Some(dir) = configured {
        return dir.join(name);
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join(name).exists())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop()
        .map(|d| d.join(name))
        .unwrap_or_else(|| PathBuf::from(name))
}

/// The URL without its password, and the password (for PGPASSWORD).
pub fn split_password(url: &str) -> (String, Option<String>) {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let pw = u.password().map(|p| {
                url::form_urlencoded::parse(format!("p={p}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            });
            let _ = u.set_password(None);
            (u.to_string(), pw)
        }
        Err(_) => (url.to_string(), None),
    }
}

pub fn pg_command(tool: &Path, url: &str) -> Command {
    let (bare, pw) = split_password(url);
    let mut c = Command::new(tool);
    c.arg(format!("--dbname={bare}"));
    if let Some(p) = pw {
        c.env("PGPASSWORD", p);
    }
    c
}

/// Reads a child's stderr on a thread so it never blocks the pipe; returns its
/// tail without the lines that can quote row values (PostgreSQL's `DETAIL`,
/// `CONTEXT` and `LINE` lines: `Key (email)=(…)`, `COPY users, line 3: "…"`).
/// The error ends up in run history and the append-only audit chain, which
/// must never hold personal data.
pub fn collect_stderr(child: &mut Child) -> std::thread::JoinHandle<String> {
    let stderr = child.stderr.take();
    std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut e) = stderr {
            let _ = std::io::Read::read_to_string(&mut e, &mut s);
        }
        let s = without_row_values(&s);
        let tail: String = s
            .chars()
            .rev()
            .take(2000)
            .collect::<String>()
            .chars()
            .rev()
            .collect();
        tail.trim().to_string()
    })
}

pub fn without_row_values(stderr: &str) -> String {
    let mut withheld = false;
    let mut kept: Vec<&str> = Vec::new();
    for line in stderr.lines() {
        let t = line.trim_start();
        if ["DETAIL:", "CONTEXT:", "LINE "]
            .iter()
            .any(|p| t.starts_with(p))
        {
            withheld = true;
        } else {
            kept.push(line);
        }
    }
    if withheld {
        kept.push("(DETAIL/CONTEXT lines withheld: they can quote row values; run the tool by hand to see them)");
    }
    kept.join("\n")
}

/// A PostgreSQL snapshot held open for the dump and the row counts.
pub struct PgSnapshot {
    conn: sqlx::PgConnection,
    pub id: String,
    pub server_version: String,
}

impl PgSnapshot {
    pub async fn open(url: &str) -> Result<PgSnapshot> {
        let mut conn = sqlx::PgConnection::connect(url).await?;
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await?;
        let id: String = sqlx::query_scalar("SELECT pg_export_snapshot()")
            .fetch_one(&mut conn)
            .await?;
        let server_version: String = sqlx::query_scalar("SHOW server_version")
            .fetch_one(&mut conn)
            .await?;
        Ok(PgSnapshot {
            conn,
            id,
            server_version,
        })
    }

    /// Row counts of every user table, as the dump sees them.
    pub async fn row_counts(&mut self) -> Result<BTreeMap<String, i64>> {
        pg_row_counts(&mut self.conn).await
    }

    /// Whole row counts of extension configuration tables: pg_dump dumps only
    /// the rows its filter selects, and a restore's `CREATE EXTENSION` adds
    /// the rest back, so the stream's count would not match the restore's.
    pub async fn extension_config_counts(&mut self) -> Result<BTreeMap<String, i64>> {
        let tables = sqlx::query(
            "SELECT n.nspname::text AS s, c.relname::text AS t
             FROM pg_extension e CROSS JOIN LATERAL unnest(e.extconfig) AS x(oid)
             JOIN pg_class c ON c.oid = x.oid JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind = 'r' ORDER BY 1, 2",
        )
        .fetch_all(&mut self.conn)
        .await?;
        let mut out = BTreeMap::new();
        for r in tables {
            let (s, t): (String, String) = (r.try_get("s")?, r.try_get("t")?);
            let n: i64 =
                sqlx::query_scalar(&format!("SELECT count(*) FROM ONLY {}.{}", q(&s), q(&t)))
                    .fetch_one(&mut self.conn)
                    .await?;
            out.insert(format!("{s}.{t}"), n);
        }
        Ok(out)
    }

    pub async fn close(mut self) -> Result<()> {
        self.conn.execute("COMMIT").await?;
        Ok(())
    }
}

/// Rows of every table that holds rows itself (not a partitioned parent),
/// each without its inheritance children: what pg_dump's COPY of it holds.
pub async fn pg_row_counts(conn: &mut sqlx::PgConnection) -> Result<BTreeMap<String, i64>> {
    let tables = sqlx::query(
        "SELECT n.nspname::text AS s, c.relname::text AS t
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind = 'r' AND c.relpersistence <> 't'
           AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
         ORDER BY 1, 2",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut out = BTreeMap::new();
    for r in tables {
        let (s, t): (String, String) = (r.try_get("s")?, r.try_get("t")?);
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM ONLY {}.{}", q(&s), q(&t)))
            .fetch_one(&mut *conn)
            .await?;
        out.insert(format!("{s}.{t}"), n);
    }
    Ok(out)
}

pub async fn sqlite_row_counts(path: &Path) -> Result<BTreeMap<String, i64>> {
    let opts =
        sqlx::sqlite::SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .read_only(true);
    let mut conn = sqlx::SqliteConnection::connect_with(&opts).await?;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await?;
    let mut out = BTreeMap::new();
    for t in tables {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {}", q(&t)))
            .fetch_one(&mut conn)
            .await?;
        out.insert(t, n);
    }
    conn.close().await?;
    Ok(out)
}

pub async fn sqlite_version(path: &Path) -> Result<String> {
    let opts =
        sqlx::sqlite::SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .read_only(true);
    let mut conn = sqlx::SqliteConnection::connect_with(&opts).await?;
    let v: String = sqlx::query_scalar("SELECT sqlite_version()")
        .fetch_one(&mut conn)
        .await?;
    conn.close().await?;
    Ok(v)
}

/// A consistent copy of a live SQLite database (the online `VACUUM INTO`).
pub async fn sqlite_snapshot(db: &Path, into: &Path) -> Result<()> {
    let opts = sqlx::sqlite::SqliteConnectOptions::from_str(&format!("sqlite://{}", db.display()))?
        .busy_timeout(std::time::Duration::from_secs(30));
    let mut conn = sqlx::SqliteConnection::connect_with(&opts).await?;
    sqlx::query("VACUUM INTO $1")
        .bind(into.display().to_string())
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(())
}

/// A new empty database on the server of `server_url`; returns its URL.
pub async fn pg_create_database(server_url: &str, name: &str) -> Result<String> {
    let mut conn = sqlx::PgConnection::connect(server_url).await?;
    conn.execute(format!("CREATE DATABASE {}", q(name)).as_str())
        .await?;
    conn.close().await?;
    let mut u =
        url::Url::parse(server_url).map_err(|e| Error::Usage(format!("database URL: {e}")))?;
    u.set_path(&format!("/{name}"));
    Ok(u.to_string())
}

pub async fn pg_drop_database(server_url: &str, name: &str) -> Result<()> {
    let mut conn = sqlx::PgConnection::connect(server_url).await?;
    conn.execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", q(name)).as_str())
        .await?;
    conn.close().await?;
    Ok(())
}

/// Base tables outside the system schemas: a restore target must have none.
pub async fn pg_user_table_count_on(conn: &mut sqlx::PgConnection) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables
         WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema')",
    )
    .fetch_one(conn)
    .await?)
}

pub fn spawn_piped(mut cmd: Command, stdin: bool) -> Result<Child> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    if stdin {
        cmd.stdin(Stdio::piped()).stdout(Stdio::null());
    }
    let program = cmd.get_program().to_string_lossy().to_string();
    cmd.spawn().map_err(|e| {
        Error::Backup(format!(
            "cannot run {program}: {e} (install the PostgreSQL client tools, or set backup.pg_bin)"
        ))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn row_values_are_withheld_from_tool_errors() {
        let e = "pg_restore: error: COPY failed for table \"users\": ERROR:  duplicate key value violates unique constraint \"users_email_key\"\nDETAIL:  Key (email)=(a@x.example) already exists.\nCONTEXT:  COPY users, line 3: \"3\ta@x.example\"";
        let kept = super::without_row_values(e);
        assert!(
            kept.contains("users_email_key") && kept.contains("withheld"),
            "{kept}"
        );
        assert!(!kept.contains("a@x.example"), "{kept}");
    }
}
