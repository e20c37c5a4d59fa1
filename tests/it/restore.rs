//! Restores on SQLite and PostgreSQL: the erasure ledger is re-applied before
//! the restored database becomes visible, with the pseudonym key the ledger
//! was written with (checked up front) and the legal holds in force; a
//! refused or failed restore leaves nothing behind; restores are evidence.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::{run_ok, stdout_json, ConfigDir};
use serde_json::Value;

const KEY: &str = "test-pseudonym-key-0123456789";

pub(crate) const DATA_MAP: &str = r#"
[app]
subjects = { table = "users", id = "id", email = "email" }
orgs = { table = "orgs", id = "id", closed_at = "closed_at" }
memberships = { table = "memberships", org = "org_id", subject = "user_id", role = "role" }

[[data_map]]
table = "users"
class = "account"
subject = "id"
erasure = "anonymize"
anonymize = { email = "hmac", name = "fixed:Deleted user" }
export = true

[[data_map]]
table = "memberships"
class = "account"
org = "org_id"
subject = "user_id"
export = true

[[data_map]]
table = "logs"
class = "logs"
timestamp = "created_at"
org = "org_id"
subject = "user_id"
retention = "90d"
erasure = "delete"
export = true

[[data_map]]
table = "audit"
class = "audit"
timestamp = "created_at"
org = "org_id"
subject = "user_id"
erasure = "anonymize"
anonymize = { ip = "null" }
export = true
"#;

/// Org 1: owner 1 (sole), members 2 and 5. Org 2: owners 3 and 4, member 2.
pub(crate) const FIXTURE: &str = r#"
CREATE TABLE orgs (id INTEGER PRIMARY KEY, name TEXT, closed_at TEXT);
CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, name TEXT);
CREATE TABLE memberships (org_id INTEGER, user_id INTEGER, role TEXT);
CREATE TABLE logs (id INTEGER PRIMARY KEY, org_id INTEGER, user_id INTEGER, path TEXT, created_at TEXT);
CREATE TABLE audit (id INTEGER PRIMARY KEY, org_id INTEGER, user_id INTEGER, ip TEXT, created_at TEXT);
INSERT INTO orgs VALUES (1, 'acme', NULL), (2, 'beta', NULL);
INSERT INTO users VALUES (1, 'owner@x.example', 'Olive Owner'), (2, 'member@x.example', 'Max Member'),
    (3, 'co1@x.example', 'Co One'), (4, 'co2@x.example', 'Co Two'), (5, 'late@x.example', 'Lee Late');
INSERT INTO memberships VALUES (1, 1, 'owner'), (1, 2, 'member'), (2, 3, 'owner'), (2, 4, 'owner'),
    (2, 2, 'member'), (1, 5, 'member');
INSERT INTO logs (org_id, user_id, path, created_at) VALUES (1, 2, '/a', '2026-01-01'), (1, 2, '/b', '2026-01-02'),
    (2, 2, '/c', '2026-01-03'), (1, 1, '/d', '2026-01-04'), (1, 5, '/e', '2026-01-05'), (2, 5, '/f', '2026-01-06');
INSERT INTO audit (org_id, user_id, ip, created_at) VALUES (1, 2, '203.0.113.9', '2026-01-01'),
    (2, 2, '203.0.113.8', '2026-01-01'), (1, 1, '203.0.113.1', '2026-01-01'), (1, 5, '203.0.113.5', '2026-01-01');
"#;

struct Setup {
    c: ConfigDir,
    identity: age::x25519::Identity,
    app_url: String,
    pg: bool,
}

impl Setup {
    /// `lethe` with the age identity and, if given, a pseudonym key (else none at all).
    fn lethe_key(&self, key: Option<&str>) -> Command {
        use age::secrecy::ExposeSecret;
        let mut cmd = self.c.lethe();
        cmd.env(
            "LETHE_AGE_IDENTITY",
            self.identity.to_string().expose_secret(),
        )
        .current_dir(self.c.path());
        match key {
            Some(k) => cmd.env("LETHE_PSEUDONYM_KEY", k),
            None => cmd.env_remove("LETHE_PSEUDONYM_KEY"),
        };
        cmd
    }

    fn lethe(&self) -> Command {
        self.lethe_key(Some(KEY))
    }

    fn backup(&self) -> String {
        let b = stdout_json(&run_ok(self.lethe().args([
            "run",
            "backup.create",
            "--json",
        ])));
        b["result"]["id"].as_str().unwrap().to_string()
    }

    fn erase(&self, email: &str) {
        run_ok(
            self.lethe()
                .args(["dsr", "submit", "--kind", "erasure", "--subject", email]),
        );
        let v = stdout_json(&run_ok(self.lethe().args(["run", "dsr.process", "--json"])));
        assert_eq!(v["result"]["completed"].as_array().unwrap().len(), 1, "{v}");
    }

    fn restore(&self, id: &str, to: &str, key: Option<&str>) -> Output {
        self.lethe_key(key)
            .args(["backup", "restore", id, "--json", "--to", to])
            .output()
            .unwrap()
    }

    /// A restore target that does not exist yet: a file in the config folder, or a database name.
    fn target(&self, name: &str) -> String {
        if self.pg {
            let admin = std::env::var("LETHE_TEST_PG_URL").unwrap();
            let base = admin.rsplit_once('/').unwrap().0.to_string();
            format!("{base}/lethe_r_{}_{name}", uuid::Uuid::new_v4().simple())
        } else {
            format!(
                "sqlite://{}",
                self.c.path().join(format!("{name}.db")).display()
            )
        }
    }

    /// An empty PostgreSQL database made before the restore (SQLite: a new file name).
    async fn empty_target(&self, name: &str) -> String {
        let target = self.target(name);
        if self.pg {
            let (base, db) = target.rsplit_once('/').unwrap();
            exec(
                &format!("{base}/postgres"),
                &format!("CREATE DATABASE {db}"),
            )
            .await;
        }
        target
    }

    /// Nothing of a restore into `target` is left: no file, no temporary file; no
    /// database if the restore would have created it, else no relation in it.
    async fn assert_nothing_at(&self, target: &str) {
        if self.pg {
            let db = target.rsplit_once('/').unwrap().1;
            let n: i64 = query_one(
                &std::env::var("LETHE_TEST_PG_URL").unwrap(),
                &format!("SELECT count(*) FROM pg_database WHERE datname = '{db}'"),
            )
            .await;
            if n == 1 {
                assert_eq!(
                    relations(target).await,
                    0,
                    "the restore left relations in {db}"
                );
            }
        } else {
            let path = Path::new(target.strip_prefix("sqlite://").unwrap());
            assert!(!path.exists(), "{} was left behind", path.display());
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            let stray: Vec<String> = std::fs::read_dir(path.parent().unwrap())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
                .filter(|n| n.contains(&name))
                .collect();
            assert!(stray.is_empty(), "temporary files left behind: {stray:?}");
        }
    }

    fn audit(&self) -> Vec<Value> {
        let out = run_ok(self.lethe().args(["audit", "export"]));
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

async fn query_one(url: &str, q: &str) -> i64 {
    if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        let n = sqlx::query_scalar(q).fetch_one(&pool).await.unwrap();
        pool.close().await;
        n
    } else {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        let n = sqlx::query_scalar(q).fetch_one(&pool).await.unwrap();
        pool.close().await;
        n
    }
}

/// Relations outside the system schemas.
async fn relations(url: &str) -> i64 {
    query_one(
        url,
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'",
    )
    .await
}

async fn pg_db_exists(target: &str) -> bool {
    let db = target.rsplit_once('/').unwrap().1;
    query_one(
        &std::env::var("LETHE_TEST_PG_URL").unwrap(),
        &format!("SELECT count(*) FROM pg_database WHERE datname = '{db}'"),
    )
    .await
        == 1
}

async fn exec(url: &str, q: &str) {
    if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        sqlx::raw_sql(q).execute(&pool).await.unwrap();
        pool.close().await;
    } else {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        sqlx::raw_sql(q).execute(&pool).await.unwrap();
        pool.close().await;
    }
}

/// Every mapped row about user `u`, as text, table by table.
async fn rows_of(url: &str, u: i64) -> Vec<Vec<String>> {
    let queries = [
        format!("SELECT id || '|' || email || '|' || coalesce(name, '') FROM users WHERE id = {u}"),
        format!("SELECT org_id || '|' || role FROM memberships WHERE user_id = {u} ORDER BY 1"),
        format!("SELECT org_id || '|' || path FROM logs WHERE user_id = {u} ORDER BY 1"),
        format!(
            "SELECT org_id || '|' || coalesce(ip, '-') FROM audit WHERE user_id = {u} ORDER BY 1"
        ),
    ];
    let mut out = Vec::new();
    for q in queries {
        let rows: Vec<String> = if url.starts_with("postgres") {
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            let r = sqlx::query_scalar(&q).fetch_all(&pool).await.unwrap();
            pool.close().await;
            r
        } else {
            let pool = sqlx::SqlitePool::connect(url).await.unwrap();
            let r = sqlx::query_scalar(&q).fetch_all(&pool).await.unwrap();
            pool.close().await;
            r
        };
        out.push(rows);
    }
    out
}

async fn setup(pg: bool) -> Option<Setup> {
    let identity = age::x25519::Identity::generate();
    let extra = format!(
        "[object_store]\nurl = \"file://objects\"\n[backup]\nrecipients = [\"{}\"]\n{DATA_MAP}",
        identity.to_public()
    );
    let (c, app_url) = if pg {
        let url = crate::common::fresh_pg_db().await?;
        exec(
            &url,
            &FIXTURE
                .replace("INTEGER PRIMARY KEY", "SERIAL PRIMARY KEY")
                .replace("created_at TEXT", "created_at DATE"),
        )
        .await;
        (ConfigDir::full(Some(&url), Some(&url), "", "", &extra), url)
    } else {
        let c = ConfigDir::full(None, None, "", "", &extra);
        let url = format!("sqlite://{}", c.path().join("app.db").display());
        exec(&url, FIXTURE).await;
        (c, url)
    };
    for kind in ["dsr.process", "backup.create"] {
        c.job(
            kind,
            &format!("kind = \"{kind}\"\nschedule = \"0 0 3 * * *\"\nmax_attempts = 1\n"),
        );
    }
    run_ok(c.lethe().arg("migrate"));
    Some(Setup {
        c,
        identity,
        app_url,
        pg,
    })
}

macro_rules! both {
    ($($case:ident),* $(,)?) => {
        mod sqlite { $(#[tokio::test(flavor = "multi_thread")] async fn $case() { super::$case(false).await })* }
        mod postgres { $(#[tokio::test(flavor = "multi_thread")] async fn $case() { super::$case(true).await })* }
    };
}

both!(
    a_missing_or_wrong_key_is_refused_up_front_and_leaves_nothing,
    a_failed_re_application_leaves_nothing,
    re_application_keeps_the_rows_holds_kept,
    concurrent_restores_into_one_target_yield_one_good_database,
);

async fn a_missing_or_wrong_key_is_refused_up_front_and_leaves_nothing(pg: bool) {
    let Some(s) = setup(pg).await else { return };
    let id = s.backup();
    s.erase("member@x.example");
    // Created after the backup and erased: a ledger entry the backup has no subject for.
    exec(
        &s.app_url,
        "INSERT INTO users (id, email, name) VALUES (6, 'new@x.example', 'Nia New')",
    )
    .await;
    s.erase("new@x.example");
    // PostgreSQL: an existing empty database stays empty.
    let target = s.empty_target("restored").await;
    let none = s.restore(&id, &target, None);
    assert_eq!(none.status.code(), Some(2));
    s.assert_nothing_at(&target).await;

    // PostgreSQL: a database the restore would create is not created.
    let fresh = s.target("fresh");
    let none = s.restore(&id, &fresh, None);
    let err = String::from_utf8_lossy(&none.stderr);
    assert_eq!(none.status.code(), Some(2), "{err}");
    assert!(err.contains("LETHE_PSEUDONYM_KEY"), "{err}");
    s.assert_nothing_at(&fresh).await;
    if pg {
        assert!(!pg_db_exists(&fresh).await);
    }

    let wrong = s.restore(&id, &target, Some("another-key-0123456789"));
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert_eq!(wrong.status.code(), Some(2), "{err}");
    assert!(
        err.contains("does not match the one the erasure ledger was written with"),
        "{err}"
    );
    assert!(!err.contains("another-key"), "the key never appears: {err}");
    s.assert_nothing_at(&target).await;

    // The same key is refused by a live erasure too, before it changes anything.
    run_ok(s.lethe().args([
        "dsr",
        "submit",
        "--kind",
        "erasure",
        "--subject",
        "late@x.example",
    ]));
    let v = crate::common::run_job(
        s.lethe_key(Some("another-key-0123456789")),
        "dsr.process",
        &[],
    );
    assert_ne!(v["status"], "succeeded", "{v}");
    assert_eq!(
        rows_of(&s.app_url, 5).await[2].len(),
        2,
        "late's logs untouched"
    );

    // A retry with the right key succeeds: the erased subject is gone before anyone sees the file.
    let ok = s.restore(&id, &target, Some(KEY));
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let r = stdout_json(&ok);
    assert_eq!(r["erasures_reapplied"], 1, "{r}");
    let restored = target.clone();
    let member = rows_of(&restored, 2).await;
    assert!(member[0][0].contains("|erased-"), "{member:?}");
    assert!(member[2].is_empty() && member[1].is_empty(), "{member:?}");
    assert_eq!(rows_of(&restored, 1).await, rows_of(&s.app_url, 1).await);
    if !pg {
        use std::os::unix::fs::PermissionsExt;
        let path = target.strip_prefix("sqlite://").unwrap();
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the restored database is private");
        let bytes = std::fs::read(path).unwrap();
        assert!(
            !bytes.windows(16).any(|w| w == b"member@x.example"),
            "the erased email is not left in free pages"
        );
    }

    let audit = s.audit();
    let restored_ev: Vec<&Value> = audit
        .iter()
        .filter(|e| e["action"] == "backup.restored")
        .collect();
    assert_eq!(restored_ev.len(), 1, "{audit:?}");
    let d = &restored_ev[0]["details"];
    assert_eq!(restored_ev[0]["target"], format!("backup:{id}"));
    assert_eq!(
        (d["id"].as_str(), d["erasures_reapplied"].as_u64()),
        (Some(id.as_str()), Some(1))
    );
    let failed = audit
        .iter()
        .filter(|e| e["action"] == "backup.restore_failed")
        .count();
    assert_eq!(failed, 3, "every refusal is evidence");
}

async fn a_failed_re_application_leaves_nothing(pg: bool) {
    let Some(s) = setup(pg).await else { return };
    // The backup's `logs` lacks the column the data map erases by: re-applying fails there,
    // after the earlier tables of the erasure plan were already handled.
    exec(&s.app_url, "ALTER TABLE logs RENAME COLUMN user_id TO uid").await;
    let id = s.backup();
    exec(&s.app_url, "ALTER TABLE logs RENAME COLUMN uid TO user_id").await;
    s.erase("member@x.example");

    // PostgreSQL: a database that existed (empty) before is kept, and emptied of what
    // the restore added; what was in it before stays.
    let existing = s.empty_target("existing").await;
    if pg {
        exec(
            &existing,
            "CREATE SCHEMA keepme; CREATE TYPE keepme.mood AS ENUM ('ok');",
        )
        .await;
    }
    let out = s.restore(&id, &existing, Some(KEY));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("user_id"), "{err}");
    s.assert_nothing_at(&existing).await;
    if pg {
        let kept = query_one(
            &existing,
            "SELECT count(*) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
             WHERE n.nspname = 'keepme' AND t.typname = 'mood'",
        )
        .await;
        assert_eq!(kept, 1, "what was there before is kept");
    }

    // PostgreSQL: a database the restore created is dropped again.
    let fresh = s.target("fresh");
    let out = s.restore(&id, &fresh, Some(KEY));
    assert_eq!(out.status.code(), Some(1));
    s.assert_nothing_at(&fresh).await;
    if pg {
        assert!(!pg_db_exists(&fresh).await);
    }

    // Emptied again, the existing target takes a good backup.
    let good = s.backup();
    let ok = s.restore(&good, &existing, Some(KEY));
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

async fn re_application_keeps_the_rows_holds_kept(pg: bool) {
    let Some(s) = setup(pg).await else { return };
    let id = s.backup();
    let hold = stdout_json(&run_ok(s.lethe().args([
        "hold",
        "add",
        "--org",
        "1",
        "--reason",
        "litigation",
        "--json",
    ])));
    s.erase("member@x.example");
    let live = rows_of(&s.app_url, 2).await;
    assert_eq!(
        live[2],
        vec!["1|/a", "1|/b"],
        "the live erasure kept org 1's rows"
    );

    let target = s.empty_target("held").await;
    let out = s.restore(&id, &target, Some(KEY));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = stdout_json(&out);
    assert_eq!(
        rows_of(&target, 2).await,
        live,
        "the restore erased exactly what the live erasure did: {r}"
    );
    assert_eq!(r["rows_kept_for_holds"]["logs"], 2, "{r}");

    // After the hold is released, a later erasure takes everything, and so does its
    // re-application; the holds in force now apply to every ledger entry.
    run_ok(s.lethe().args([
        "hold",
        "release",
        &hold["id"].to_string(),
        "--reason",
        "settled",
    ]));
    s.erase("late@x.example");
    let live5 = rows_of(&s.app_url, 5).await;
    assert!(live5[1].is_empty() && live5[2].is_empty(), "{live5:?}");
    let target = s.empty_target("released").await;
    let out = s.restore(&id, &target, Some(KEY));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored = target.clone();
    assert_eq!(rows_of(&restored, 5).await, live5);
    assert!(
        rows_of(&restored, 2).await[2].is_empty(),
        "no hold is in force any more"
    );
    assert_eq!(stdout_json(&out)["erasures_reapplied"], 2);

    // A subject hold placed after the erasure keeps that subject's restored rows, as it
    // would stop a live erasure.
    run_ok(s.lethe().args([
        "hold",
        "add",
        "--subject",
        "late@x.example",
        "--reason",
        "subpoena",
    ]));
    let target = s.empty_target("subject_held").await;
    let out = s.restore(&id, &target, Some(KEY));
    let r = stdout_json(&out);
    assert_eq!(
        (
            r["erasures_reapplied"].as_u64(),
            r["subjects_held"].as_u64()
        ),
        (Some(1), Some(1)),
        "{r}"
    );
    assert_eq!(rows_of(&target, 5).await[2].len(), 2);
}

async fn concurrent_restores_into_one_target_yield_one_good_database(pg: bool) {
    let Some(s) = setup(pg).await else { return };
    let id = s.backup();
    s.erase("member@x.example");
    let target = s.target("raced");
    let children: Vec<_> = (0..2)
        .map(|_| {
            s.lethe()
                .args(["backup", "restore", &id, "--json", "--to", &target])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let mut codes: Vec<Option<i32>> = outs.iter().map(|o| o.status.code()).collect();
    codes.sort();
    assert_eq!(
        codes,
        vec![Some(0), Some(2)],
        "one restore wins, the other is refused: {:?}",
        outs.iter()
            .map(|o| String::from_utf8_lossy(&o.stderr).to_string())
            .collect::<Vec<_>>()
    );
    let member = rows_of(&target, 2).await;
    assert!(
        member[2].is_empty(),
        "the surviving database has the ledger applied"
    );
    assert_eq!(rows_of(&target, 1).await, rows_of(&s.app_url, 1).await);
    if !pg {
        let name = "raced.db.restore-";
        let stray = std::fs::read_dir(s.c.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains(name)
            })
            .count();
        assert_eq!(stray, 0);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn non_file_sqlite_targets_and_existing_files_are_refused() {
    let s = setup(false).await.unwrap();
    let id = s.backup();
    s.erase("member@x.example");
    for to in [
        "sqlite::memory:",
        "sqlite://:memory:",
        "sqlite://x.db?mode=memory",
        "sqlite://",
    ] {
        let out = s.restore(&id, to, Some(KEY));
        assert_eq!(
            out.status.code(),
            Some(2),
            "{to}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let names: Vec<String> = std::fs::read_dir(s.c.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| n.contains("memory") || n.starts_with("x.db")),
        "no plaintext file named after the URL: {names:?}"
    );

    // An existing file is never replaced, nor removed when the restore is refused.
    let existing = s.c.path().join("precious.db");
    std::fs::write(&existing, b"the user's own data").unwrap();
    let to = format!("sqlite://{}", existing.display());
    for key in [Some(KEY), Some("another-key-0123456789"), None] {
        let out = s.restore(&id, &to, key);
        assert_eq!(out.status.code(), Some(2));
        assert_eq!(std::fs::read(&existing).unwrap(), b"the user's own data");
    }
    // A folder that does not exist: a clear refusal, nothing created.
    let out = s.restore(
        &id,
        &format!("sqlite://{}/no/such/dir/r.db", s.c.path().display()),
        Some(KEY),
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!s.c.path().join("no").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ledger_without_a_check_value_tests_the_key_against_erased_requests() {
    // A ledger written before check values existed.
    let s = setup(false).await.unwrap();
    let id = s.backup();
    s.erase("member@x.example");
    let store = format!("sqlite://{}", s.c.path().join("lethe.db").display());
    // What an older Lethe left: no check value, and the erased email still in its request.
    exec(&store, "DELETE FROM erasure_ledger_check").await;
    exec(
        &store,
        "UPDATE dsr_requests SET subject = 'member@x.example' WHERE kind = 'erasure'",
    )
    .await;
    let target = s.target("old");
    let wrong = s.restore(&id, &target, Some("another-key-0123456789"));
    assert_eq!(
        wrong.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    s.assert_nothing_at(&target).await;
    assert_eq!(
        query_one(&store, "SELECT count(*) FROM erasure_ledger_check").await,
        0
    );
    let ok = s.restore(&id, &target, Some(KEY));
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(stdout_json(&ok)["erasures_reapplied"], 1);
    assert_eq!(
        query_one(&store, "SELECT count(*) FROM erasure_ledger_check").await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_ledger_needs_no_key_and_a_postgres_password_is_not_recorded() {
    let Some(s) = setup(true).await else { return };
    let id = s.backup();
    // Trust authentication ignores the password; it must still never reach the evidence.
    let target = s
        .target("pw")
        .replacen("postgres@", "postgres:s3cret-pw@", 1);
    let out = s.restore(&id, &target, None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout_json(&out)["erasures_reapplied"], 0);
    let audit = serde_json::to_string(&s.audit()).unwrap();
    assert!(audit.contains("backup.restored"));
    assert!(!audit.contains("s3cret-pw"), "{audit}");
}
