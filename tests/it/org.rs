//! An org's deletion on SQLite and PostgreSQL: recorded with a cooling-off
//! period, cancellable, refused under a legal hold, executed by `org.purge`
//! (every row of that org, in every mapped table, whatever the foreign-key
//! order; no other org's row), with a certificate naming the backups that
//! still hold the org's data and when each is pruned.

use crate::common::{run_job, run_ok, stdout_json, ConfigDir};
use serde_json::Value;

const DATA_MAP: &str = r#"
[app]
subjects = { table = "users", id = "id", email = "email" }
orgs = { table = "orgs", id = "id" }
memberships = { table = "memberships", org = "org_id", subject = "user_id", role = "role" }

[[data_map]]
table = "orgs"
class = "accounts"
org = "id"

[[data_map]]
table = "users"
class = "accounts"
org = "home_org_id"
subject = "id"

[[data_map]]
table = "memberships"
class = "accounts"
org = "org_id"
subject = "user_id"

[[data_map]]
table = "events"
class = "events"
timestamp = "created_at"
org = "org_id"
subject = "user_id"
retention = ["400d"]

[[data_map]]
table = "notes"
class = "content"
org = "org_id"
"#;

/// Orgs 1–3; 40 events per org; notes reference their org (a foreign key,
/// so the notes must go before the org's row, though the data map lists the
/// org first). User 2's home is org 3 but it is a member of org 1 too; user
/// 3 belongs to org 3 only.
const FIXTURE: &str = r#"
CREATE TABLE orgs (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, home_org_id INTEGER NOT NULL REFERENCES orgs (id));
CREATE TABLE memberships (org_id INTEGER NOT NULL REFERENCES orgs (id), user_id INTEGER NOT NULL REFERENCES users (id), role TEXT NOT NULL);
CREATE TABLE events (id INTEGER PRIMARY KEY, org_id INTEGER, user_id INTEGER, created_at TEXT NOT NULL);
CREATE TABLE notes (id INTEGER PRIMARY KEY, org_id INTEGER NOT NULL REFERENCES orgs (id), body TEXT);
INSERT INTO orgs VALUES (1, 'a'), (2, 'b'), (3, 'c');
INSERT INTO users VALUES (1, 'u1@x.example', 1), (2, 'u2@x.example', 3), (3, 'u3@x.example', 3), (4, 'u4@x.example', 2);
INSERT INTO memberships VALUES (1, 1, 'owner'), (3, 2, 'owner'), (1, 2, 'member'), (3, 3, 'member'), (2, 4, 'owner');
WITH RECURSIVE n(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM n WHERE g < 120)
    INSERT INTO events (org_id, user_id, created_at) SELECT 1 + g % 3, 1 + g % 2, '2026-01-01 00:00:00' FROM n;
WITH RECURSIVE n(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM n WHERE g < 30)
    INSERT INTO notes (org_id, body) SELECT 1 + g % 3, 'note' FROM n;
"#;

pub(super) struct Fixture {
    pub(super) c: ConfigDir,
    app_url: String,
}

impl Fixture {
    pub(super) async fn count(&self, sql: &str) -> i64 {
        crate::common::app_i64(&self.app_url, sql).await
    }

    pub(super) fn lethe(&self) -> std::process::Command {
        self.c.lethe()
    }

    fn org(&self, args: &[&str]) -> std::process::Output {
        self.lethe().arg("org").args(args).output().unwrap()
    }
}

async fn fixture(pg: bool, extra: &str) -> Option<Fixture> {
    fixture_with(pg, "", extra).await
}

pub(super) async fn fixture_with(pg: bool, runner: &str, extra: &str) -> Option<Fixture> {
    let map = format!("{DATA_MAP}\n{extra}");
    let (c, app_url) = if pg {
        let url = crate::common::fresh_pg_db().await?;
        let fixture = FIXTURE
            .replace("INTEGER PRIMARY KEY", "bigserial PRIMARY KEY")
            .replace(
                "WITH RECURSIVE n(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM n WHERE g < 120)",
                "WITH n(g) AS (SELECT generate_series(1, 120))",
            )
            .replace(
                "WITH RECURSIVE n(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM n WHERE g < 30)",
                "WITH n(g) AS (SELECT generate_series(1, 30))",
            )
            .replace("INTEGER", "bigint");
        crate::common::app_exec(&url, &fixture).await;
        (
            ConfigDir::full(Some(&url), Some(&url), runner, "", &map),
            url,
        )
    } else {
        let c = ConfigDir::full(None, None, runner, "", &map);
        let url = format!("sqlite://{}", c.path().join("app.db").display());
        crate::common::app_exec(&url, FIXTURE).await;
        (c, url)
    };
    for kind in ["org.purge", "mail.flush", "backup.create"] {
        c.job(
            kind,
            &format!("kind = \"{kind}\"\nschedule = \"0 0 3 * * *\"\nmax_attempts = 1\n"),
        );
    }
    c.job(
        "backup.prune",
        "kind = \"backup.prune\"\nschedule = \"0 30 3 * * *\"\nmax_attempts = 1\n",
    );
    run_ok(c.lethe().arg("migrate"));
    Some(Fixture { c, app_url })
}

fn mails(f: &Fixture) -> Vec<String> {
    run_job(f.lethe(), "mail.flush", &[]);
    std::fs::read_dir(f.c.path().join("mail"))
        .map(|d| {
            d.map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
                .collect()
        })
        .unwrap_or_default()
}

macro_rules! both {
    ($($case:ident),* $(,)?) => {
        mod sqlite { $(#[tokio::test(flavor = "multi_thread")] async fn $case() { super::$case(false).await })* }
        mod postgres { $(#[tokio::test(flavor = "multi_thread")] async fn $case() { super::$case(true).await })* }
    };
}

both!(
    a_deletion_waits_out_its_cooling_off_then_removes_every_row_of_that_org_only,
    bad_requests_exit_with_clear_errors_and_record_nothing,
    a_hold_refuses_the_request_and_stops_a_scheduled_deletion,
    an_export_holds_every_row_of_the_org_as_json_lines_matching_its_manifest,
    a_purge_killed_mid_table_is_rescued_and_counts_every_row_once,
);

/// SIGKILL between two batches of org 3's events; another `serve` rescues the
/// run, finishes the deletion and certifies every row, none twice.
async fn a_purge_killed_mid_table_is_rescued_and_counts_every_row_once(pg: bool) {
    let runner =
        "lease = \"1s\"\nretry_base = \"100ms\"\nretry_max = \"200ms\"\npoll_interval = \"100ms\"";
    let Some(f) = fixture_with(pg, runner, "").await else {
        return;
    };
    // Disabled: serve must not enqueue a scheduled run of its own; it only takes ours.
    f.c.job(
        "org.purge",
        "kind = \"org.purge\"\nschedule = \"0 0 3 * * *\"\nenabled = false\n[params]\nbatch_size = 5\n",
    );
    run_ok(f.lethe().args([
        "org", "delete", "--org", "3", "--reason", "r", "--after", "0s",
    ]));
    let paused = || {
        let mut cmd = f.lethe();
        cmd.env("LETHE_TEST_PAUSE_AT", "org_batch:300");
        cmd
    };
    let mut a = crate::common::spawn_serve(paused(), &f.c.path().join("serve-a.log"), &[]);
    run_ok(f.lethe().args(["run", "org.purge", "--detach"]));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let events = "SELECT count(*) FROM events WHERE org_id = 3";
    while f.count(events).await > 30 {
        assert!(
            std::time::Instant::now() < deadline,
            "the purge never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    crate::common::signal(&a, libc::SIGKILL);
    a.wait().unwrap();
    let left = f.count(events).await;
    assert!(
        (1..40).contains(&left),
        "killed mid-table: {left} of 40 left"
    );
    // Started, it can no longer be cancelled.
    let cancel = f.org(&["cancel", "1"]);
    assert_eq!(
        cancel.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&cancel.stderr)
    );

    let mut b = crate::common::spawn_serve(paused(), &f.c.path().join("serve-b.log"), &[]);
    let run = crate::common::wait_run_end(|| f.lethe(), "org.purge", 60);
    crate::common::signal(&b, libc::SIGTERM);
    crate::common::wait_exit(&mut b, 30);
    assert_eq!(
        (run["state"].as_str(), run["attempts"].as_i64()),
        (Some("succeeded"), Some(2)),
        "{run}"
    );
    let rows = &run["result"]["deleted"][0]["rows"];
    let got =
        ["events", "notes", "orgs", "users", "memberships"].map(|t| rows[t].as_i64().unwrap_or(-1));
    assert_eq!(
        got,
        [40, 10, 1, 1, 2],
        "every row counted once across the crash: {run}"
    );
    assert_eq!(f.count(events).await, 0);
    assert_eq!(
        f.count("SELECT count(*) FROM events").await,
        80,
        "other orgs untouched"
    );
}

async fn a_deletion_waits_out_its_cooling_off_then_removes_every_row_of_that_org_only(pg: bool) {
    let Some(f) = fixture(pg, "").await else {
        return;
    };
    // Org 2 asks with a week's cooling-off, then cancels; org 3 asks for now.
    let later = stdout_json(&run_ok(f.lethe().args([
        "org",
        "delete",
        "--org",
        "2",
        "--reason",
        "changed plans",
        "--after",
        "7d",
        "--json",
    ])));
    let now = stdout_json(&run_ok(f.lethe().args([
        "org",
        "delete",
        "--org",
        "3",
        "--reason",
        "contract ended",
        "--after",
        "0s",
        "--contact",
        "Admin@C.example",
        "--json",
    ])));
    assert_eq!(now["state"], "scheduled", "{now}");
    let v = run_job(f.lethe(), "org.purge", &[]);
    assert_eq!(v["status"], "succeeded", "{v}");
    let deleted = v["result"]["deleted"].as_array().unwrap();
    assert_eq!(deleted.len(), 1, "only org 3's cooling-off has ended: {v}");
    let rows = &deleted[0]["rows"];
    let got =
        ["events", "notes", "orgs", "users", "memberships"].map(|t| rows[t].as_i64().unwrap_or(-1));
    assert_eq!(got, [40, 10, 1, 1, 2], "{v}");
    assert_eq!(deleted[0]["accounts_moved"], 1, "{v}");
    for table in ["events", "notes"] {
        let left = f
            .count(&format!("SELECT count(*) FROM {table} WHERE org_id = 3"))
            .await;
        assert_eq!(left, 0, "{table}");
        let others = f
            .count(&format!("SELECT count(*) FROM {table} WHERE org_id <> 3"))
            .await;
        assert_eq!(others, if table == "events" { 80 } else { 20 }, "{table}");
    }
    assert_eq!(f.count("SELECT count(*) FROM orgs").await, 2);
    // User 2 belongs to org 1 as well: its account stays, moved there; user 3 is gone.
    assert_eq!(f.count("SELECT count(*) FROM users").await, 3);
    assert_eq!(
        f.count("SELECT home_org_id FROM users WHERE id = 2").await,
        1
    );
    assert_eq!(f.count("SELECT count(*) FROM users WHERE id = 3").await, 0);
    let kept = "SELECT count(*) FROM memberships WHERE user_id = 2";
    assert_eq!(f.count(kept).await, 1);

    // Org 2's request is still scheduled and can be cancelled; org 3's cannot any more.
    let id2 = later["id"].to_string();
    let id3 = now["id"].to_string();
    assert_eq!(f.org(&["cancel", &id3]).status.code(), Some(3));
    let cancelled = stdout_json(&run_ok(f.lethe().args(["org", "cancel", &id2, "--json"])));
    assert_eq!(cancelled["state"], "cancelled");
    assert_eq!(
        f.count("SELECT count(*) FROM events WHERE org_id = 2")
            .await,
        40
    );

    let status = stdout_json(&run_ok(
        f.lethe().args(["org", "status", "--org", "3", "--json"]),
    ));
    assert_eq!(status["requests"][0]["state"], "done", "{status}");
    assert!(status["deleted_at"].is_string(), "{status}");
    let certificate = mails(&f)
        .into_iter()
        .find(|m| m.contains("certificate of deletion"))
        .expect("a certificate mailed to the DPO");
    let to = certificate
        .lines()
        .find(|l| l.starts_with("To:"))
        .unwrap_or_default();
    assert!(to.contains("dpo@test.example"), "{certificate}");
    assert!(
        to.contains("admin@c.example"),
        "and to the org's contact: {to}"
    );
    assert!(certificate.contains("contract ended"), "{certificate}");
}

async fn bad_requests_exit_with_clear_errors_and_record_nothing(pg: bool) {
    let Some(f) = fixture(pg, "").await else {
        return;
    };
    let cases: [(&[&str], i32, &str); 5] = [
        (&["--org", "99"], 2, "not in the application database"),
        (&["--org", "1", "--class", "bogus"], 2, "class `bogus`"),
        (&["--org", "1", "--after", "100d"], 2, "beyond the limit"),
        (&["--org", "1", "--after", "soon"], 2, "--after"),
        (
            &["--org", "1", "--contact", "not-an-email"],
            2,
            "not an email",
        ),
    ];
    for (args, code, says) in cases {
        let out = f
            .lethe()
            .args(["org", "delete", "--reason", "r"])
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    run_ok(
        f.lethe()
            .args(["org", "delete", "--org", "1", "--reason", "r"]),
    );
    let twice = f.org(&["delete", "--org", "1", "--reason", "r"]);
    assert_eq!(
        twice.status.code(),
        Some(3),
        "one scheduled deletion per org"
    );
    assert!(String::from_utf8_lossy(&twice.stderr).contains("already has a scheduled deletion"));
    let status = stdout_json(&run_ok(
        f.lethe().args(["org", "status", "--org", "1", "--json"]),
    ));
    assert_eq!(status["requests"].as_array().unwrap().len(), 1, "{status}");
    assert_eq!(f.org(&["cancel", "12345"]).status.code(), Some(2));
    // The DPO's SLA report lists the org's open request beside the subjects'.
    let report = stdout_json(&run_ok(f.lethe().args(["dsr", "report", "--json"])));
    let item = &report["org_requests"][0];
    assert_eq!(
        (item["org"].as_str(), item["state"].as_str()),
        (Some("1"), Some("scheduled")),
        "{report}"
    );
    assert_eq!(item["days_left"], 29, "{report}");
    let text = String::from_utf8(run_ok(f.lethe().args(["dsr", "report"])).stdout).unwrap();
    assert!(text.contains("Organisation requests (1)"), "{text}");
}

async fn a_hold_refuses_the_request_and_stops_a_scheduled_deletion(pg: bool) {
    let Some(f) = fixture(pg, "").await else {
        return;
    };
    run_ok(f.lethe().args([
        "org", "delete", "--org", "1", "--reason", "r", "--after", "0s",
    ]));
    run_ok(
        f.lethe()
            .args(["hold", "add", "--org", "1", "--reason", "litigation"]),
    );
    run_ok(
        f.lethe()
            .args(["hold", "add", "--org", "2", "--reason", "audit"]),
    );
    let refused = f.org(&["delete", "--org", "2", "--reason", "r"]);
    assert_eq!(refused.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("audit"));
    let v = run_job(f.lethe(), "org.purge", &[]);
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(v["result"]["deleted"], Value::Array(vec![]), "{v}");
    assert_eq!(v["result"]["held"][0]["org"], "1", "{v}");
    assert_eq!(
        f.count("SELECT count(*) FROM events WHERE org_id = 1")
            .await,
        40
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_certificate_names_each_backup_holding_the_org_and_when_pruning_removes_it() {
    let identity = age::x25519::Identity::generate();
    let extra = format!(
        "[object_store]\nurl = \"file://objects\"\n[backup]\nrecipients = [\"{}\"]\nkeep = {{ daily = 2 }}\n",
        identity.to_public()
    );
    let f = fixture(false, &extra).await.unwrap();
    let b = run_job(f.lethe(), "backup.create", &[]);
    assert_eq!(b["status"], "succeeded", "{b}");
    let backup_id = b["result"]["id"].as_str().unwrap().to_string();
    run_ok(f.lethe().args([
        "org",
        "delete",
        "--org",
        "3",
        "--reason",
        "offboarding",
        "--after",
        "0s",
    ]));
    let v = run_job(f.lethe(), "org.purge", &[]);
    let held = &v["result"]["deleted"][0]["backups_holding_data"];
    assert_eq!(held[0]["backup"], backup_id.as_str(), "{v}");
    // Daily backups at 03:00 keep two days: two newer ones push it out, and the
    // 03:30 prune after the second removes it.
    let expires: chrono::DateTime<chrono::Utc> =
        held[0]["expires_at"].as_str().unwrap().parse().unwrap();
    let days = (expires - chrono::Utc::now()).num_hours() as f64 / 24.0;
    assert!((1.0..=3.0).contains(&days), "expires in {days} days: {v}");
    assert_eq!(expires.format("%H:%M").to_string(), "03:30", "{v}");
    let status = stdout_json(&run_ok(
        f.lethe().args(["org", "status", "--org", "3", "--json"]),
    ));
    assert_eq!(
        status["backups_holding_data"][0]["expires_at"],
        held[0]["expires_at"]
    );
    let certificate = mails(&f)
        .into_iter()
        .find(|m| m.contains("certificate of deletion"))
        .unwrap();
    assert!(certificate.contains(&backup_id), "{certificate}");
}

async fn an_export_holds_every_row_of_the_org_as_json_lines_matching_its_manifest(pg: bool) {
    let identity = age::x25519::Identity::generate();
    let extra = format!(
        "[object_store]\nurl = \"file://objects\"\n[backup]\nrecipients = [\"{}\"]\n",
        identity.to_public()
    );
    let Some(f) = fixture(pg, &extra).await else {
        return;
    };
    let v = stdout_json(&run_ok(
        f.lethe().args(["org", "export", "--org", "2", "--json"]),
    ));
    let sealed = std::fs::read(
        f.c.path()
            .join("objects")
            .join(v["object"].as_str().unwrap()),
    )
    .unwrap();
    let entries = crate::common::archive_entries(&sealed, &identity);
    let manifest: Value = serde_json::from_slice(&entries["manifest.json"]).unwrap();
    assert_eq!(
        manifest, v["manifest"],
        "the stored manifest is the one reported"
    );
    let tables = manifest["tables"].as_array().unwrap();
    assert_eq!(tables.len(), 5, "{manifest}");
    for t in tables {
        let (table, file) = (t["table"].as_str().unwrap(), t["file"].as_str().unwrap());
        let body = &entries[file];
        use sha2::Digest;
        assert_eq!(
            hex::encode(sha2::Sha256::digest(body)),
            t["sha256"],
            "{table}"
        );
        let lines: Vec<Value> = std::str::from_utf8(body)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len() as i64, t["rows"].as_i64().unwrap(), "{table}");
        let col = match table {
            "orgs" => "id",
            "users" => "home_org_id",
            _ => "org_id",
        };
        let want = f
            .count(&format!("SELECT count(*) FROM {table} WHERE {col} = 2"))
            .await;
        assert_eq!(lines.len() as i64, want, "{table}");
        assert!(
            lines.iter().all(|l| l[col] == 2),
            "{table}: only org 2's rows"
        );
    }
    let status = stdout_json(&run_ok(
        f.lethe().args(["org", "status", "--org", "2", "--json"]),
    ));
    assert_eq!(status["requests"][0]["kind"], "export", "{status}");
    assert!(
        status["deleted_at"].is_null(),
        "an export is no deletion: {status}"
    );
    assert_eq!(status["requests"][0]["state"], "done", "{status}");
    let unknown = f.org(&["export", "--org", "77"]);
    assert_eq!(unknown.status.code(), Some(2));

    // The org's deletion takes its export archive with it.
    let archive =
        f.c.path()
            .join("objects")
            .join(v["object"].as_str().unwrap());
    assert!(archive.exists());
    run_ok(f.lethe().args([
        "org", "delete", "--org", "2", "--reason", "r", "--after", "0s",
    ]));
    let purge = run_job(f.lethe(), "org.purge", &[]);
    assert_eq!(
        purge["result"]["deleted"][0]["exports_deleted"],
        serde_json::json!([v["request"]]),
        "{purge}"
    );
    assert!(!archive.exists(), "the export archive went with the org");
    let status = stdout_json(&run_ok(
        f.lethe().args(["org", "status", "--org", "2", "--json"]),
    ));
    assert_eq!(status["requests"][0]["state"], "expired", "{status}");
}

/// An export's archive is deleted once its link expires (`dsr.export_link_ttl`).
#[tokio::test(flavor = "multi_thread")]
async fn an_export_archive_is_deleted_when_its_link_expires() {
    let identity = age::x25519::Identity::generate();
    let extra = format!(
        "[object_store]\nurl = \"file://objects\"\n[backup]\nrecipients = [\"{}\"]\n[dsr]\nexport_link_ttl = \"1s\"\n",
        identity.to_public()
    );
    let f = fixture(false, &extra).await.unwrap();
    let v = stdout_json(&run_ok(
        f.lethe().args(["org", "export", "--org", "1", "--json"]),
    ));
    let archive =
        f.c.path()
            .join("objects")
            .join(v["object"].as_str().unwrap());
    let early = run_job(f.lethe(), "org.purge", &[]);
    assert_eq!(
        early["result"]["exports_deleted"],
        serde_json::json!([]),
        "{early}"
    );
    assert!(archive.exists(), "kept while its link is valid");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let late = run_job(f.lethe(), "org.purge", &[]);
    assert_eq!(
        late["result"]["exports_deleted"],
        serde_json::json!([v["request"]]),
        "{late}"
    );
    assert!(!archive.exists());
}

/// A process that died mid-export leaves its request `scheduled`: org.purge
/// never takes it for a deletion, and a new export waits for it (exit 3).
#[tokio::test(flavor = "multi_thread")]
async fn an_export_left_by_a_crash_is_never_run_as_a_deletion() {
    let identity = age::x25519::Identity::generate();
    let extra = format!(
        "[object_store]\nurl = \"file://objects\"\n[backup]\nrecipients = [\"{}\"]\n",
        identity.to_public()
    );
    let f = fixture(false, &extra).await.unwrap();
    let crashed = f
        .lethe()
        .env("LETHE_TEST_CRASH_AT", "org_export_recorded")
        .args(["org", "export", "--org", "2"])
        .output()
        .unwrap();
    assert!(!crashed.status.success());
    let v = run_job(f.lethe(), "org.purge", &[]);
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(v["result"]["deleted"], Value::Array(vec![]), "{v}");
    assert_eq!(
        f.count("SELECT count(*) FROM events WHERE org_id = 2")
            .await,
        40
    );
    let again = f.org(&["export", "--org", "2"]);
    assert_eq!(
        again.status.code(),
        Some(3),
        "one export of an org at a time"
    );
    let status = stdout_json(&run_ok(
        f.lethe().args(["org", "status", "--org", "2", "--json"]),
    ));
    assert_eq!(status["requests"][0]["state"], "scheduled", "{status}");
}

/// A backup taken before an org's deletion, restored: the org is deleted
/// again before the restore becomes visible (its members elsewhere kept).
#[tokio::test(flavor = "multi_thread")]
async fn a_restore_of_an_older_backup_deletes_a_deleted_org_again() {
    let identity = age::x25519::Identity::generate();
    use age::secrecy::ExposeSecret;
    let keys = tempfile::tempdir().unwrap();
    let id_file = keys.path().join("identity.txt");
    std::fs::write(&id_file, identity.to_string().expose_secret()).unwrap();
    let extra = format!(
        "[object_store]\nurl = \"file://objects\"\n[backup]\nrecipients = [\"{}\"]\nidentity_file = \"{}\"\n",
        identity.to_public(),
        id_file.display()
    );
    let f = fixture(false, &extra).await.unwrap();
    let b = run_job(f.lethe(), "backup.create", &[]);
    let backup = b["result"]["id"].as_str().unwrap().to_string();
    run_ok(f.lethe().args([
        "org", "delete", "--org", "3", "--reason", "r", "--after", "0s",
    ]));
    assert_eq!(run_job(f.lethe(), "org.purge", &[])["status"], "succeeded");
    let target = f.c.path().join("restored.db");
    let to = format!("sqlite://{}", target.display());
    let v = stdout_json(&run_ok(
        f.lethe()
            .args(["backup", "restore", &backup, "--json", "--to", &to]),
    ));
    assert_eq!(v["orgs_deleted_again"], serde_json::json!(["3"]), "{v}");
    let restored = |sql: &'static str| {
        let to = to.clone();
        async move { crate::common::app_i64(&to, sql).await }
    };
    assert_eq!(
        restored("SELECT count(*) FROM events WHERE org_id = 3").await,
        0
    );
    assert_eq!(
        restored("SELECT count(*) FROM notes WHERE org_id = 3").await,
        0
    );
    assert_eq!(restored("SELECT count(*) FROM orgs").await, 2);
    assert_eq!(
        restored("SELECT home_org_id FROM users WHERE id = 2").await,
        1
    );
    assert_eq!(restored("SELECT count(*) FROM events").await, 80);

    // A new org 3 after the deletion, in a newer backup: restoring that one deletes nothing.
    crate::common::app_exec(
        &f.app_url,
        "INSERT INTO orgs VALUES (3, 'c again'); INSERT INTO events (org_id, user_id, created_at) VALUES (3, 1, '2026-11-01 00:00:00');",
    )
    .await;
    let newer = run_job(f.lethe(), "backup.create", &[]);
    let newer = newer["result"]["id"].as_str().unwrap().to_string();
    let to2 = format!("sqlite://{}", f.c.path().join("restored2.db").display());
    let v = stdout_json(&run_ok(
        f.lethe()
            .args(["backup", "restore", &newer, "--json", "--to", &to2]),
    ));
    assert_eq!(v["orgs_deleted_again"], serde_json::json!([]), "{v}");
    assert_eq!(
        crate::common::app_i64(&to2, "SELECT count(*) FROM events WHERE org_id = 3").await,
        1
    );
}

/// A person under a legal hold keeps their rows when their org is deleted.
/// Here the held account still references the org's row (a foreign key), so
/// the org cannot go yet: the run fails saying so, the request stays running,
/// and once the hold is released the next run finishes the deletion.
#[tokio::test(flavor = "multi_thread")]
async fn a_held_person_keeps_their_rows_until_the_hold_is_released() {
    let f = fixture(false, "").await.unwrap();
    let keyed = || {
        let mut cmd = f.lethe();
        cmd.env("LETHE_PSEUDONYM_KEY", "org-test-pseudonym-key-0123456789");
        cmd
    };
    let hold = stdout_json(&run_ok(keyed().args([
        "hold",
        "add",
        "--subject",
        "u3@x.example",
        "--reason",
        "litigation",
        "--json",
    ])));
    run_ok(f.lethe().args([
        "org", "delete", "--org", "3", "--reason", "r", "--after", "0s",
    ]));
    let v = run_job(f.lethe(), "org.purge", &[]);
    assert_eq!(v["status"], "dead", "{v}");
    assert!(v["error"].as_str().unwrap().contains("orgs"), "{v}");
    // User 3 (org 3 only) is held: their account and membership stay; the rest went.
    assert_eq!(f.count("SELECT count(*) FROM users WHERE id = 3").await, 1);
    assert_eq!(
        f.count("SELECT count(*) FROM memberships WHERE org_id = 3 AND user_id = 3")
            .await,
        1
    );
    assert_eq!(
        f.count("SELECT count(*) FROM events WHERE org_id = 3")
            .await,
        0
    );
    assert_eq!(
        f.count("SELECT count(*) FROM memberships WHERE org_id = 3")
            .await,
        1
    );
    let status = stdout_json(&run_ok(
        f.lethe().args(["org", "status", "--org", "3", "--json"]),
    ));
    assert_eq!(status["requests"][0]["state"], "running", "{status}");

    let id = hold["id"].to_string();
    run_ok(keyed().args(["hold", "release", &id, "--reason", "settled"]));
    let v = run_job(f.lethe(), "org.purge", &[]);
    assert_eq!(v["status"], "succeeded", "{v}");
    let certificate = &v["result"]["deleted"][0];
    assert_eq!(
        certificate["rows"]["events"], 40,
        "every row counted once: {v}"
    );
    assert_eq!(
        certificate["rows_kept_for_holds"],
        serde_json::json!({}),
        "{v}"
    );
    assert_eq!(
        f.count("SELECT count(*) FROM events WHERE org_id = 3")
            .await,
        0
    );
    assert_eq!(f.count("SELECT count(*) FROM users WHERE id = 3").await, 0);
}
