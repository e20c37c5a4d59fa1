//! Scratch databases for restore drills (`lethe_verify_*`): where they may
//! live (a server apart from the application's, unless explicitly allowed),
//! and their lifetime. Each is claimed by a session advisory lock, taken
//! before the database is created and held while the drill runs, so the sweep
//! at the start of every drill drops exactly those whose drill is over
//! (crashed, killed, timed out), never one in progress on another worker.
//! Advisory locks are per database, so a scratch name carries a hash of the
//! database its claim lives in (as the server names it), and a sweep looks
//! only at its own: another deployment sharing the server is never swept.
//! A session lock needs a direct connection (not a pooler in transaction
//! mode); and since an idle claim can be cut by the network, a sweep also
//! leaves alone a scratch database that anyone is connected to.

use sqlx::Connection;

use super::source;
use crate::config::Config;
use crate::error::{Error, Result};

/// The advisory lock class of scratch claims ("leth"); the key is the name's hash.
const LOCK_CLASS: i32 = 0x6c65_7468;
const PREFIX: &str = "lethe_verify_";

/// `lethe_verify_HASH_`: the scratch names whose claims live in the
/// database `home` (its name as `current_database()` gives it).
pub fn prefix(home: &str) -> String {
    use sha2::Digest;
    let h = hex::encode(sha2::Sha256::digest(home.as_bytes()));
    format!("{PREFIX}{}_", &h[..8])
}

async fn home(conn: &mut sqlx::PgConnection) -> Result<String> {
    Ok(sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(conn)
        .await?)
}

/// The server a drill restores into, and whether it is the application's own.
pub async fn server(config: &Config, app_url: &str) -> Result<(String, bool)> {
    let allowed = config.backup.allow_scratch_on_app_server;
    let (url, same) = match &config.backup.scratch_url {
        Some(u) => (u.clone(), same_cluster(u, app_url).await),
        None => (app_url.to_string(), true),
    };
    if same && !allowed {
        return Err(Error::Usage(
            "a restore drill would run on the application's own PostgreSQL server, competing with it \
             for I/O, memory and disk: set backup.scratch_url to a separate server (recommended), or \
             backup.allow_scratch_on_app_server = true to accept that"
                .into(),
        ));
    }
    Ok((url, same))
}

/// One cluster: the same system identifier; where it cannot be read, the
/// same host and port.
async fn same_cluster(a: &str, b: &str) -> bool {
    async fn system_id(url: &str) -> Option<i64> {
        let mut c = sqlx::PgConnection::connect(url).await.ok()?;
        let id = sqlx::query_scalar("SELECT system_identifier FROM pg_control_system()")
            .fetch_one(&mut c)
            .await
            .ok();
        let _ = c.close().await;
        id
    }
    match (system_id(a).await, system_id(b).await) {
        (Some(x), Some(y)) => x == y,
        _ => same_address(a, b),
    }
}

/// Same host and port (a URL without a port means 5432).
fn same_address(a: &str, b: &str) -> bool {
    let place = |u: &str| {
        url::Url::parse(u).ok().map(|u| {
            let host = u.host_str().unwrap_or("").to_ascii_lowercase();
            (host, u.port().unwrap_or(5432))
        })
    };
    place(a).is_some() && place(a) == place(b)
}

/// A scratch database, dropped by `drop_now` or, if the drill is dropped
/// first (its run timed out), in the background as the guard goes.
pub struct ScratchDb {
    server: String,
    name: String,
    url: String,
    claim: Option<sqlx::PgConnection>,
}

impl ScratchDb {
    pub async fn create(server: &str) -> Result<ScratchDb> {
        let mut claim = sqlx::PgConnection::connect(server).await?;
        let name = format!(
            "{}{}",
            prefix(&home(&mut claim).await?),
            uuid::Uuid::new_v4().simple()
        );
        // Claimed before it exists: a sweep never sees it unclaimed.
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext($2))")
            .bind(LOCK_CLASS)
            .bind(&name)
            .fetch_one(&mut claim)
            .await?;
        if !got {
            return Err(Error::Backup(
                "could not claim a scratch database name (lock taken); try again".into(),
            ));
        }
        let url = source::pg_create_database(server, &name).await?;
        Ok(ScratchDb {
            server: server.to_string(),
            name,
            url,
            claim: Some(claim),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Drops the database, then releases its claim.
    pub async fn drop_now(mut self) -> Result<()> {
        let claim = self.claim.take();
        drop_database(&self.server, &self.name, claim).await
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        if let Some(claim) = self.claim.take() {
            let (server, name) = (self.server.clone(), self.name.clone());
            crate::cleanup::spawn(async move {
                if let Err(e) = drop_database(&server, &name, Some(claim)).await {
                    tracing::warn!(error = %e, database = %name, "could not drop the scratch database; the next drill sweeps it");
                }
            });
        }
    }
}

async fn drop_database(server: &str, name: &str, claim: Option<sqlx::PgConnection>) -> Result<()> {
    // WITH (FORCE) ends a killed pg_restore's sessions that linger.
    source::pg_drop_database(server, name).await?;
    if let Some(c) = claim {
        c.close().await?;
    }
    Ok(())
}

/// Drops every scratch database on `server` whose claim is free and that
/// nobody is connected to (its drill is over), and those earlier versions
/// named `lethe_verify_UUID` without a claim; returns their names. Best
/// effort: one that cannot be dropped is logged and left, and the drill goes on.
pub async fn sweep(server: &str) -> Vec<String> {
    match sweep_on(server).await {
        Ok(dropped) => dropped,
        Err(e) => {
            tracing::warn!(error = %e, "could not sweep leftover scratch databases; the drill goes on");
            Vec::new()
        }
    }
}

async fn sweep_on(server: &str) -> Result<Vec<String>> {
    let mut conn = sqlx::PgConnection::connect(server).await?;
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT d.datname::text FROM pg_database d
         WHERE (starts_with(d.datname, $1) OR d.datname ~ '^lethe_verify_[0-9a-f]{32}$')
           AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname) ORDER BY 1",
    )
    .bind(prefix(&home(&mut conn).await?))
    .fetch_all(&mut conn)
    .await?;
    let mut dropped = Vec::new();
    for name in names {
        let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext($2))")
            .bind(LOCK_CLASS)
            .bind(&name)
            .fetch_one(&mut conn)
            .await?;
        if !free {
            continue;
        }
        let r = source::pg_drop_database(server, &name).await;
        sqlx::query("SELECT pg_advisory_unlock($1, hashtext($2))")
            .bind(LOCK_CLASS)
            .bind(&name)
            .execute(&mut conn)
            .await?;
        match r {
            Ok(()) => {
                tracing::warn!(database = %name, "dropped a scratch database a finished drill left behind");
                dropped.push(name);
            }
            Err(e) => {
                tracing::warn!(error = %e, database = %name, "could not drop a leftover scratch database")
            }
        }
    }
    conn.close().await?;
    Ok(dropped)
}
