//! Everything a command or job needs, opened once.

use std::sync::Arc;

use crate::appdb::AppDb;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::kms::Kms;
use crate::mail::Mailer;
use crate::metrics::Metrics;
use crate::objstore::ObjectStore;
use crate::store::{self, Store};

pub struct Context {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub mailer: Mailer,
    pub metrics: Metrics,
    /// Identifies this process in leases: host, pid and a random suffix.
    pub worker_id: String,
    /// The application database's pool, opened on first use and shared by every
    /// job and HTTP request of this process (a pool per request exhausted
    /// PostgreSQL's connections under load).
    app_db: tokio::sync::OnceCell<AppDb>,
    /// Set once `appdb::preflight` passed in this process (intake checks once,
    /// not per request; jobs check on every run).
    app_db_checked: tokio::sync::OnceCell<()>,
    /// The backup/export object store and the KMS client, built on first use
    /// and shared (one HTTP connection pool per process, not per call).
    object_store: tokio::sync::OnceCell<Arc<dyn ObjectStore>>,
    kms: tokio::sync::OnceCell<Arc<dyn Kms>>,
    /// The application's own stores (`[object_stores.NAME]`), opened on first use.
    app_stores: tokio::sync::Mutex<std::collections::HashMap<String, Arc<dyn ObjectStore>>>,
}

impl Context {
    /// Connects to the store; fails with a hint if the schema is not migrated.
    pub async fn open(config: Config) -> Result<Arc<Context>> {
        let ctx = Self::open_unchecked(config).await?;
        if !ctx.store.is_migrated().await? {
            return Err(Error::Usage(
                "the worker schema is missing or out of date; run `lethe migrate` first".into(),
            ));
        }
        Ok(ctx)
    }

    /// Connects without checking migrations (for `migrate` and `check`).
    pub async fn open_unchecked(config: Config) -> Result<Arc<Context>> {
        let store = store::connect(&config.store.url, config.store.max_connections).await?;
        let mailer = Mailer::new(&config.mail)?;
        Ok(Arc::new(Context {
            config: Arc::new(config),
            store,
            mailer,
            metrics: Metrics::new(),
            worker_id: worker_id(),
            app_db: tokio::sync::OnceCell::new(),
            app_db_checked: tokio::sync::OnceCell::new(),
            object_store: tokio::sync::OnceCell::new(),
            kms: tokio::sync::OnceCell::new(),
            app_stores: tokio::sync::Mutex::new(std::collections::HashMap::new()),
        }))
    }

    /// The process's application-database pool (`database.max_connections`);
    /// connects on first use, and again after a failed first attempt.
    pub async fn app_db(&self) -> Result<AppDb> {
        let db = self
            .app_db
            .get_or_try_init(|| {
                AppDb::connect_pool(
                    &self.config.database.url,
                    self.config.database.max_connections,
                )
            })
            .await?;
        Ok(db.clone())
    }

    /// `app_db` after the data map was checked against the live schema
    /// (`appdb::preflight`) once in this process.
    pub async fn app_db_checked(&self) -> Result<AppDb> {
        let db = self.app_db().await?;
        self.app_db_checked
            .get_or_try_init(|| async {
                crate::appdb::preflight(&self.config, &db).await.map(|_| ())
            })
            .await?;
        Ok(db)
    }
}

impl Context {
    /// The application's store `name` (`[object_stores.NAME]`), where its
    /// rows' files live; opened once per process.
    pub async fn app_store(&self, name: &str) -> Result<Arc<dyn ObjectStore>> {
        let mut open = self.app_stores.lock().await;
        if let Some(s) = open.get(name) {
            return Ok(s.clone());
        }
        let cfg = self
            .config
            .object_stores
            .get(name)
            .ok_or_else(|| Error::Usage(format!("no [object_stores.{name}] in the config")))?;
        let store = crate::objstore::open(cfg).await?;
        open.insert(name.to_string(), store.clone());
        Ok(store)
    }

    /// The `[object_store]` backups and exports go to, opened once per process.
    pub async fn object_store(&self) -> Result<Arc<dyn ObjectStore>> {
        let store = self
            .object_store
            .get_or_try_init(|| async {
                let cfg = self.config.object_store.as_ref().ok_or_else(|| {
                    Error::Usage("no [object_store] in the config: add url = \"file://backups\" or \"s3://bucket/prefix\"".into())
                })?;
                crate::objstore::open(cfg).await
            })
            .await?;
        Ok(store.clone())
    }

    /// The `[keys]` provider's client, built once per process.
    pub async fn kms(&self) -> Result<Arc<dyn Kms>> {
        let kms = self
            .kms
            .get_or_try_init(|| crate::kms::open(&self.config.keys))
            .await?;
        Ok(kms.clone())
    }
}

pub fn worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    format!("{host}:{}:{suffix}", std::process::id())
}
