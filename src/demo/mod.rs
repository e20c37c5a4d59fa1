//! The demo's sample application: a multi-tenant SaaS database with three
//! years of activity, seeded deterministically.

use chrono::{DateTime, Duration, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{QueryBuilder, Sqlite, SqlitePool};
use std::path::Path;
use std::str::FromStr;

use crate::error::Result;

mod encrypt;
mod history;
mod requests;
pub use encrypt::encrypt_as_the_app;
pub use history::{seed_dsr_history, History};
pub use requests::{
    restore_older_backup, submit_sample_requests, unverified_past_its_window, CORRECTED_NAME,
};

/// The demo app's mapping and data map, appended to the starter config.
pub const DATA_MAP: &str = r#"
# The application's own file store: the documents' files live here.
[object_stores.documents]
url = "file://appfiles"

[app]
subjects = { table = "users", id = "id", email = "email" }
orgs = { table = "orgs", id = "id", closed_at = "closed_at" }
memberships = { table = "memberships", org = "org_id", subject = "user_id", role = "role", owner_roles = ["owner"] }
# The orgs' data keys, wrapped by each org's KMS key: the application reads them from here.
keys = { table = "org_data_keys" }

[[data_map]]
table = "users"
class = "account"
subject = "id"
org = "home_org_id"
retention = "none"
encrypted = ["phone"]
erasure = "anonymize"
anonymize = { email = "hmac", name = "fixed:Deleted user", phone = "hmac", last_login_ip = "null", last_login_at = "null" }
export = true
# Columns a person may have corrected (dsr submit --kind rectification).
rectifiable = ["name"]

[[data_map]]
table = "customers"
class = "customer_pii"
org = "org_id"
retention = "org_closed+30d"
encrypted = ["nik"]

[[data_map]]
table = "memberships"
class = "account"
org = "org_id"
subject = "user_id"
retention = "org_closed+1y"
erasure = "delete"
export = true

[[data_map]]
table = "api_request_logs"
class = "api_logs"
timestamp = "created_at"
org = "org_id"
subject = "user_id"
retention = ["90d", "org_closed+30d"]
erasure = "delete"
export = true

[[data_map]]
table = "webhook_deliveries"
class = "webhooks"
timestamp = "created_at"
org = "org_id"
retention = ["30d", "org_closed+30d"]

[[data_map]]
table = "audit_logs"
class = "security_audit"
timestamp = "created_at"
org = "org_id"
subject = "actor_user_id"
retention = ["7y", "org_closed+1y"]
erasure = "anonymize"
anonymize = { ip = "null" }
export = true

[[data_map]]
table = "documents"
class = "customer_content"
timestamp = "updated_at"
org = "org_id"
subject = "owner_user_id"
retention = "org_closed+30d"
erasure = "delete"
export = true
# Each document's file, in the application's store: it goes with its row.
objects = [{ column = "storage_key", store = "documents" }]

[[data_map]]
table = "llm_interactions"
class = "llm_logs"
timestamp = "created_at"
org = "org_id"
subject = "user_id"
retention = ["30d", "org_closed+30d"]
erasure = "delete"
export = true
"#;

pub const SOLE_OWNER: &str = "owner@demo.example";
pub const PLAIN_MEMBER: &str = "member@demo.example";

/// The email the seed gives user `id` (3..=200).
pub fn user_email(id: i64) -> String {
    format!("user{id:03}@tenant{:02}.example", 2 + id % 11)
}

const SCHEMA: &str = r#"
CREATE TABLE orgs (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, plan TEXT NOT NULL,
    created_at TEXT NOT NULL, closed_at TEXT);
CREATE TABLE users (
    id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, name TEXT NOT NULL,
    home_org_id INTEGER NOT NULL REFERENCES orgs(id), phone TEXT,
    created_at TEXT NOT NULL, last_login_at TEXT, last_login_ip TEXT);
-- Encrypted columns (users.phone, customers.nik) hold `lethe1:` values sealed
-- with the row's org's data key; the wrapped keys live here, kept by Lethe.
CREATE TABLE org_data_keys (
    org_id INTEGER NOT NULL, version INTEGER NOT NULL, wrapped_key TEXT NOT NULL,
    kms_key_id TEXT NOT NULL, state TEXT NOT NULL, created_at TEXT NOT NULL,
    PRIMARY KEY (org_id, version));
CREATE TABLE customers (
    id INTEGER PRIMARY KEY, org_id INTEGER NOT NULL REFERENCES orgs(id), name TEXT NOT NULL,
    nik TEXT, created_at TEXT NOT NULL);
CREATE TABLE memberships (
    org_id INTEGER NOT NULL REFERENCES orgs(id), user_id INTEGER NOT NULL REFERENCES users(id),
    role TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member')), created_at TEXT NOT NULL,
    PRIMARY KEY (org_id, user_id));
CREATE TABLE api_request_logs (
    id INTEGER PRIMARY KEY, org_id INTEGER NOT NULL, user_id INTEGER, method TEXT NOT NULL,
    path TEXT NOT NULL, status INTEGER NOT NULL, ip TEXT, user_agent TEXT, created_at TEXT NOT NULL);
CREATE INDEX api_request_logs_created_at ON api_request_logs (created_at);
CREATE TABLE webhook_deliveries (
    id INTEGER PRIMARY KEY, org_id INTEGER NOT NULL, endpoint_url TEXT NOT NULL, event TEXT NOT NULL,
    status_code INTEGER, payload TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE INDEX webhook_deliveries_created_at ON webhook_deliveries (created_at);
CREATE TABLE audit_logs (
    id INTEGER PRIMARY KEY, org_id INTEGER NOT NULL, actor_user_id INTEGER, action TEXT NOT NULL,
    ip TEXT, created_at TEXT NOT NULL);
CREATE INDEX audit_logs_created_at ON audit_logs (created_at);
CREATE TABLE documents (
    id INTEGER PRIMARY KEY, org_id INTEGER NOT NULL, owner_user_id INTEGER, title TEXT NOT NULL,
    body TEXT NOT NULL, storage_key TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE INDEX documents_updated_at ON documents (updated_at);
CREATE TABLE llm_interactions (
    id INTEGER PRIMARY KEY, org_id INTEGER NOT NULL, user_id INTEGER, model TEXT NOT NULL,
    prompt TEXT NOT NULL, response TEXT NOT NULL, tokens INTEGER NOT NULL, created_at TEXT NOT NULL);
CREATE INDEX llm_interactions_created_at ON llm_interactions (created_at);
"#;

/// Row counts of what was seeded, for the demo's summary.
#[derive(Debug, Default, serde::Serialize)]
pub struct Seeded {
    pub orgs: usize,
    pub users: usize,
    pub customers: usize,
    pub memberships: usize,
    pub api_request_logs: usize,
    pub webhook_deliveries: usize,
    pub audit_logs: usize,
    pub documents: usize,
    pub document_files: usize,
    pub llm_interactions: usize,
}

/// Where a document's file lives in the demo's store.
fn doc_key(org: i64, title: &str) -> String {
    format!("org{org:02}/{}.txt", title.to_lowercase().replace(' ', "-"))
}

/// App-database timestamps: SQLite's own `datetime()` format.
pub fn app_ts(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

const FIRST: &[&str] = &[
    "Ada", "Grace", "Linus", "Margaret", "Ken", "Barbara", "Dennis", "Frances", "Alan", "Radia",
];
const LAST: &[&str] = &[
    "Lovelace", "Hopper", "Torvalds", "Hamilton", "Thompson", "Liskov", "Ritchie", "Allen", "Kay",
    "Perlman",
];
const PATHS: &[&str] = &[
    "/v1/projects",
    "/v1/documents",
    "/v1/search",
    "/v1/users/me",
    "/v1/webhooks",
    "/v1/completions",
];
const EVENTS: &[&str] = &[
    "document.created",
    "document.updated",
    "member.invited",
    "invoice.paid",
];
const ACTIONS: &[&str] = &[
    "login",
    "logout",
    "member.invite",
    "role.change",
    "api_key.create",
    "export.download",
];
const MODELS: &[&str] = &["gpt-4o-mini", "claude-3-haiku", "llama-3-8b"];

pub async fn open(path: &Path) -> Result<SqlitePool> {
    crate::private_file::precreate_sqlite(path)
        .map_err(|e| crate::error::Error::io(format!("creating {}", path.display()), e))?;
    let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
        .create_if_missing(true);
    Ok(SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await?)
}

/// Creates and fills the sample app database at `path` (which must not exist).
pub async fn seed(path: &Path, now: DateTime<Utc>) -> Result<Seeded> {
    let pool = open(path).await?;
    sqlx::raw_sql(SCHEMA).execute(&pool).await?;
    let mut rng = StdRng::seed_from_u64(0x1e7e);
    let mut tx = pool.begin().await?;
    let mut s = Seeded::default();
    let span_secs = 3 * 365 * 86_400i64;
    let when = |rng: &mut StdRng| app_ts(now - Duration::seconds(rng.random_range(60..span_secs)));

    // Orgs: 1 is the demo tenant; 11 is closed two years ago, 12 closed last month
    // (31 days ago: clear of the org_closed+30d boundary, so a dry run and the
    // real run a second later select the same rows).
    let org_count = 12i64;
    let orgs: Vec<(i64, String, &str, String, Option<String>)> = (1..=org_count)
        .map(|id| {
            let name = if id == 1 {
                "Acme Analytics".to_string()
            } else {
                format!("Tenant {id:02}")
            };
            let closed = match id {
                11 => Some(app_ts(now - Duration::days(730))),
                12 => Some(app_ts(now - Duration::days(31))),
                _ => None,
            };
            let plan = ["free", "team", "enterprise"][(id % 3) as usize];
            (
                id,
                name,
                plan,
                app_ts(now - Duration::days(1000 + id)),
                closed,
            )
        })
        .collect();
    insert(
        &mut tx,
        "INSERT INTO orgs (id, name, plan, created_at, closed_at) ",
        &orgs,
        |b, r| {
            b.push_bind(r.0)
                .push_bind(r.1.clone())
                .push_bind(r.2)
                .push_bind(r.3.clone())
                .push_bind(r.4.clone());
        },
    )
    .await?;
    s.orgs = orgs.len();

    // Users: 1 = sole owner of org 1, 2 = plain member of org 1, then 198 others.
    let user_count = 200i64;
    // Their home org is their first membership's (below). Phones are seeded in
    // plaintext and encrypted by `encrypt_as_the_app` once the orgs have keys;
    // users of the two closed orgs have none left.
    let home_org = |id: i64| if id <= 2 { 1 } else { 2 + id % (org_count - 1) };
    let users: Vec<(i64, String, String, String, String)> = (1..=user_count)
        .map(|id| {
            let email = match id {
                1 => SOLE_OWNER.to_string(),
                2 => PLAIN_MEMBER.to_string(),
                _ => user_email(id),
            };
            let name = format!(
                "{} {}",
                FIRST[id as usize % FIRST.len()],
                LAST[(id as usize / 10) % LAST.len()]
            );
            (
                id,
                email,
                name,
                app_ts(now - Duration::days(900 - id)),
                format!("198.51.100.{}", id % 250),
            )
        })
        .collect();
    insert(
        &mut tx,
        "INSERT INTO users (id, email, name, home_org_id, phone, created_at, last_login_ip) ",
        &users,
        |b, r| {
            let home = home_org(r.0);
            let phone =
                (home < 11).then(|| format!("+62 812-{:04}-{:04}", 1000 + r.0, r.0 * 37 % 10_000));
            b.push_bind(r.0)
                .push_bind(r.1.clone())
                .push_bind(r.2.clone())
                .push_bind(home)
                .push_bind(phone)
                .push_bind(r.3.clone())
                .push_bind(r.4.clone());
        },
    )
    .await?;
    s.users = users.len();

    // Memberships: org 1 has exactly one owner (user 1); user 2 is a member there.
    let mut members: Vec<(i64, i64, &str)> = vec![(1, 1, "owner"), (1, 2, "member")];
    for uid in 3..=user_count {
        let org = home_org(uid);
        // The first two users of every other org own it, so no one else is a sole owner by accident.
        let role = if uid < 3 + 2 * (org_count - 1) {
            "owner"
        } else if uid % 7 == 0 {
            "admin"
        } else {
            "member"
        };
        members.push((org, uid, role));
        if uid % 5 == 0 {
            members.push((1, uid, "member"));
        }
    }
    let created = app_ts(now - Duration::days(800));
    insert(
        &mut tx,
        "INSERT INTO memberships (org_id, user_id, role, created_at) ",
        &members,
        |b, r| {
            b.push_bind(r.0)
                .push_bind(r.1)
                .push_bind(r.2)
                .push_bind(created.clone());
        },
    )
    .await?;
    s.memberships = members.len();

    let pick_member = |rng: &mut StdRng| members[rng.random_range(0..members.len())];

    // Customers of the open tenants, with their national ID number (NIK).
    let customers: Vec<(i64, String, String, String)> = (0..2_000)
        .map(|i| {
            let org = rng.random_range(1..=10);
            let name = format!(
                "{} {}",
                FIRST[rng.random_range(0..FIRST.len())],
                LAST[rng.random_range(0..LAST.len())]
            );
            let nik = format!("3171{:06}{:06}", rng.random_range(0..1_000_000), i);
            (org, name, nik, when(&mut rng))
        })
        .collect();
    insert(
        &mut tx,
        "INSERT INTO customers (org_id, name, nik, created_at) ",
        &customers,
        |b, r| {
            b.push_bind(r.0)
                .push_bind(r.1.clone())
                .push_bind(r.2.clone())
                .push_bind(r.3.clone());
        },
    )
    .await?;
    s.customers = customers.len();

    let logs: Vec<(i64, i64, &str, &str, i64, String, String)> = (0..30_000)
        .map(|_| {
            let (org, uid, _) = pick_member(&mut rng);
            let status = [200, 200, 200, 201, 204, 400, 404, 500][rng.random_range(0..8)];
            (
                org,
                uid,
                ["GET", "POST", "PATCH"][rng.random_range(0..3)],
                PATHS[rng.random_range(0..PATHS.len())],
                status,
                format!("203.0.113.{}", rng.random_range(1..255)),
                when(&mut rng),
            )
        })
        .collect();
    insert(&mut tx, "INSERT INTO api_request_logs (org_id, user_id, method, path, status, ip, user_agent, created_at) ", &logs, |b, r| {
        b.push_bind(r.0).push_bind(r.1).push_bind(r.2).push_bind(r.3).push_bind(r.4).push_bind(r.5.clone())
            .push_bind("acme-sdk/2.1").push_bind(r.6.clone());
    })
    .await?;
    s.api_request_logs = logs.len();

    let hooks: Vec<(i64, &str, i64, String)> = (0..6_000)
        .map(|_| {
            let org = rng.random_range(1..=org_count);
            (
                org,
                EVENTS[rng.random_range(0..EVENTS.len())],
                [200, 200, 500, 410][rng.random_range(0..4)],
                when(&mut rng),
            )
        })
        .collect();
    insert(&mut tx, "INSERT INTO webhook_deliveries (org_id, endpoint_url, event, status_code, payload, created_at) ", &hooks, |b, r| {
        b.push_bind(r.0).push_bind(format!("https://hooks.tenant{:02}.example/lethe", r.0)).push_bind(r.1).push_bind(r.2)
            .push_bind(format!("{{\"event\":\"{}\",\"org\":{}}}", r.1, r.0)).push_bind(r.3.clone());
    })
    .await?;
    s.webhook_deliveries = hooks.len();

    let audits: Vec<(i64, i64, &str, String, String)> = (0..6_000)
        .map(|_| {
            let (org, uid, _) = pick_member(&mut rng);
            (
                org,
                uid,
                ACTIONS[rng.random_range(0..ACTIONS.len())],
                format!("203.0.113.{}", rng.random_range(1..255)),
                when(&mut rng),
            )
        })
        .collect();
    insert(
        &mut tx,
        "INSERT INTO audit_logs (org_id, actor_user_id, action, ip, created_at) ",
        &audits,
        |b, r| {
            b.push_bind(r.0)
                .push_bind(r.1)
                .push_bind(r.2)
                .push_bind(r.3.clone())
                .push_bind(r.4.clone());
        },
    )
    .await?;
    s.audit_logs = audits.len();

    let docs: Vec<(i64, i64, String, String)> = (0..1_500)
        .map(|i| {
            let (org, uid, _) = pick_member(&mut rng);
            (org, uid, format!("Design note {i}"), when(&mut rng))
        })
        .collect();
    insert(
        &mut tx,
        "INSERT INTO documents (org_id, owner_user_id, title, body, storage_key, created_at, updated_at) ",
        &docs,
        |b, r| {
            b.push_bind(r.0)
                .push_bind(r.1)
                .push_bind(r.2.clone())
                .push_bind(format!("{} — notes written by user {}.", r.2, r.1))
                .push_bind(doc_key(r.0, &r.2))
                .push_bind(r.3.clone())
                .push_bind(r.3.clone());
        },
    )
    .await?;
    s.documents = docs.len();
    // Each document's file, where the data map's `[object_stores.documents]` says.
    let files = path.with_file_name("appfiles");
    for (org, uid, title, _) in &docs {
        let file = files.join(doc_key(*org, title));
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| crate::error::Error::io(format!("creating {}", dir.display()), e))?;
        }
        std::fs::write(&file, format!("{title}\nOwner: user {uid}\n"))
            .map_err(|e| crate::error::Error::io(format!("writing {}", file.display()), e))?;
    }
    s.document_files = docs.len();

    let llm: Vec<(i64, i64, &str, i64, String)> = (0..6_000)
        .map(|_| {
            let (org, uid, _) = pick_member(&mut rng);
            (
                org,
                uid,
                MODELS[rng.random_range(0..MODELS.len())],
                rng.random_range(50..4000),
                when(&mut rng),
            )
        })
        .collect();
    insert(&mut tx, "INSERT INTO llm_interactions (org_id, user_id, model, prompt, response, tokens, created_at) ", &llm, |b, r| {
        b.push_bind(r.0).push_bind(r.1).push_bind(r.2).push_bind(format!("Summarise the notes of user {}", r.1))
            .push_bind("Here is a short summary.").push_bind(r.3).push_bind(r.4.clone());
    })
    .await?;
    s.llm_interactions = llm.len();

    tx.commit().await?;
    pool.close().await;
    Ok(s)
}

/// Multi-row INSERTs in chunks that stay under SQLite's bound-parameter limit.
async fn insert<T>(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    head: &str,
    rows: &[T],
    mut bind: impl FnMut(&mut sqlx::query_builder::Separated<'_, '_, Sqlite, &'static str>, &T),
) -> Result<()> {
    for chunk in rows.chunks(500) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(head);
        qb.push_values(chunk, |mut b, r| bind(&mut b, r));
        qb.build().execute(&mut **tx).await?;
    }
    Ok(())
}
