//! The application's own audit log (issue 15 item 7): a data map entry marked
//! `append_only = true` must carry the guard; `lethe check` fails naming the
//! table and the fix without it, `lethe app guard install --table T` prints
//! the trigger SQL and `--apply` applies it (idempotent); then UPDATE and
//! TRUNCATE (PostgreSQL) fail and DELETE fails for anyone but Lethe's
//! retention, whose purge still deletes the expired rows. Both drivers.

use sqlx::Connection;

use crate::common::{app_exec, app_strings, run_ok, stdout_json, ConfigDir};

const DATA_MAP: &str = r#"
[[data_map]]
table = "audit_logs"
class = "security_audit"
timestamp = "created_at"
retention = "1y"
append_only = true
"#;

const PG_FIXTURE: &str = "CREATE TABLE audit_logs (id bigserial PRIMARY KEY, created_at timestamptz NOT NULL, body text);
INSERT INTO audit_logs (created_at, body) VALUES (now() - interval '400 days', 'old'), (now() - interval '500 days', 'old'), (now() - interval '1 day', 'young');";

const SQLITE_FIXTURE: &str = "CREATE TABLE audit_logs (id INTEGER PRIMARY KEY, created_at TEXT NOT NULL, body TEXT);
INSERT INTO audit_logs (created_at, body) VALUES (datetime('now', '-400 days'), 'old'), (datetime('now', '-500 days'), 'old'), (datetime('now', '-1 days'), 'young');";

struct Rig {
    c: ConfigDir,
    app: String,
}

impl Rig {
    async fn new(pg: bool) -> Option<Rig> {
        let (c, app) = if pg {
            let url = crate::common::fresh_pg_db().await?;
            app_exec(&url, PG_FIXTURE).await;
            (
                ConfigDir::full(Some(&url), Some(&url), "", "", DATA_MAP),
                url,
            )
        } else {
            let c = ConfigDir::full(None, None, "", "", DATA_MAP);
            let url = format!("sqlite://{}", c.path().join("app.db").display());
            app_exec(&url, SQLITE_FIXTURE).await;
            (c, url)
        };
        c.job(
            "purge",
            "kind = \"retention.purge\"\nschedule = \"0 15 2 * * *\"\n",
        );
        run_ok(c.lethe().arg("migrate"));
        Some(Rig { c, app })
    }

    fn pg(&self) -> bool {
        self.app.starts_with("postgres")
    }

    /// `lethe check --json`: its exit code and the guard's check.
    fn check(&self) -> (i32, serde_json::Value) {
        let out = self.c.lethe().args(["check", "--json"]).output().unwrap();
        let v = stdout_json(&out);
        let guard = v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "append-only guard")
            .cloned()
            .unwrap_or_else(|| panic!("no guard check: {v}"));
        (out.status.code().unwrap_or(-1), guard)
    }

    /// `sql` as the application would run it: the error text, if refused.
    async fn refused(&self, sql: &str) -> Option<String> {
        let result = if self.pg() {
            let mut conn = sqlx::PgConnection::connect(&self.app).await.unwrap();
            sqlx::raw_sql(sql).execute(&mut conn).await.map(|_| ())
        } else {
            let mut conn = sqlx::SqliteConnection::connect(&self.app).await.unwrap();
            sqlx::raw_sql(sql).execute(&mut conn).await.map(|_| ())
        };
        result.err().map(|e| e.to_string())
    }

    async fn bodies(&self) -> Vec<String> {
        app_strings(&self.app, "SELECT body FROM audit_logs ORDER BY id").await
    }
}

async fn the_guard_is_checked_installed_and_holds(rig: Rig) {
    let (code, guard) = rig.check();
    assert_eq!((code, &guard["status"]), (1, &"error".into()), "{guard}");
    let detail = guard["detail"].as_str().unwrap();
    assert!(
        detail.contains("data_map entry `audit_logs` is append_only")
            && detail.contains("lethe app guard install --table audit_logs --apply")
            && detail.contains("lethe.toml:"),
        "{detail}"
    );

    // Without --apply: the SQL to review, nothing changed.
    let out = run_ok(
        rig.c
            .lethe()
            .args(["app", "guard", "install", "--table", "audit_logs"]),
    );
    let sql = String::from_utf8_lossy(&out.stdout);
    assert!(
        sql.contains("CREATE TRIGGER") && sql.contains("BEGIN;"),
        "{sql}"
    );
    assert_eq!(rig.check().1["status"], "error");

    for _ in 0..2 {
        let out = run_ok(rig.c.lethe().args([
            "app",
            "guard",
            "install",
            "--table",
            "audit_logs",
            "--apply",
            "--json",
        ]));
        assert_eq!(stdout_json(&out)["applied"], true);
    }
    let (code, guard) = rig.check();
    assert_eq!((code, &guard["status"]), (0, &"ok".into()), "{guard}");

    let e = rig.refused("UPDATE audit_logs SET body = 'forged'").await;
    assert!(
        e.as_deref().is_some_and(|e| e.contains("append-only")),
        "{e:?}"
    );
    if !rig.pg() {
        // SQLite has no roles: every connection but Lethe's delete transactions.
        let e = rig
            .refused("DELETE FROM audit_logs WHERE body = 'young'")
            .await;
        assert!(
            e.as_deref().is_some_and(|e| e.contains("append-only")),
            "{e:?}"
        );
    }
    // PostgreSQL: the test connects as Lethe's own role; DELETE is tried as another below.
    if rig.pg() {
        let e = rig.refused("TRUNCATE audit_logs").await;
        assert!(
            e.as_deref().is_some_and(|e| e.contains("append-only")),
            "{e:?}"
        );
        // Another role (the application's) may not delete either.
        let role = format!("app_{}", uuid::Uuid::new_v4().simple());
        let sql = format!(
            "CREATE ROLE {role}; GRANT ALL ON audit_logs TO {role}; SET ROLE {role}; DELETE FROM audit_logs"
        );
        let e = rig.refused(&sql).await;
        assert!(
            e.as_deref().is_some_and(|e| e.contains("only role")),
            "{e:?}"
        );
    }
    assert_eq!(rig.bodies().await, ["old", "old", "young"]);

    // Lethe's retention still deletes the expired rows, and only those.
    let v = crate::common::run_job(rig.c.lethe(), "purge", &[]);
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(rig.bodies().await, ["young"]);
    if !rig.pg() {
        // After Lethe's delete, the application is refused again.
        let e = rig.refused("DELETE FROM audit_logs").await;
        assert!(
            e.is_some(),
            "the marker does not outlive Lethe's transaction"
        );
    }

    if rig.pg() {
        app_exec(
            &rig.app,
            "ALTER TABLE audit_logs DISABLE TRIGGER lethe_append_only_update",
        )
        .await;
        let (code, guard) = rig.check();
        assert_eq!((code, &guard["status"]), (1, &"error".into()), "{guard}");
        assert!(
            guard["detail"]
                .as_str()
                .unwrap()
                .contains("refusing UPDATE"),
            "{guard}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_the_guard_is_checked_installed_and_holds() {
    the_guard_is_checked_installed_and_holds(Rig::new(false).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_the_guard_is_checked_installed_and_holds() {
    if let Some(rig) = Rig::new(true).await {
        the_guard_is_checked_installed_and_holds(rig).await;
    }
}

/// The table must be mapped and marked; anonymising or encrypted entries cannot be.
#[test]
fn unmarked_tables_and_rewriting_entries_are_refused() {
    let c = ConfigDir::full(None, None, "", "", DATA_MAP);
    run_ok(c.lethe().arg("migrate"));
    let out = c
        .lethe()
        .args(["app", "guard", "install", "--table", "users"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("no data_map entry for table `users`") && err.contains("audit_logs"),
        "{err}"
    );

    let anonymized = format!(
        "{DATA_MAP}subject = \"user_id\"\nerasure = \"anonymize\"\nanonymize = {{ body = \"null\" }}\n"
    );
    let c = ConfigDir::full(None, None, "", "", &anonymized);
    let out = c.lethe().arg("check").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("append_only = true refuses UPDATE") && err.contains("lethe.toml:"),
        "{err}"
    );
}
