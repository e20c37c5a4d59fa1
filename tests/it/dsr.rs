//! Data subject requests end to end on SQLite and PostgreSQL: intake checks,
//! erasure per the data map, export archives, deadlines and extensions, the
//! SLA report through a real SMTP sink, the HTTP API over real HTTP, and
//! restores re-applying the erasure ledger.

use std::io::Read;
use std::time::{Duration, Instant};

use crate::common::{run_ok, stdout_json, ConfigDir};
use serde_json::Value;

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
rectifiable = ["name"]

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
rectifiable = ["path"]

[[data_map]]
table = "audit"
class = "audit"
timestamp = "created_at"
org = "org_id"
subject = "user_id"
erasure = "anonymize"
anonymize = { ip = "null" }
export = true

[[data_map]]
table = "invoices"
class = "billing"
org = "org_id"
subject = "user_id"
erasure = "retain"
legal_basis = "tax law: 10 years"
rectifiable = ["amount"]
"#;

/// Org 1: owner 1 (sole), member 2. Org 2: owners 3 and 4 (co-owners), member 2.
pub(crate) const FIXTURE: &str = r#"
CREATE TABLE orgs (id INTEGER PRIMARY KEY, name TEXT, closed_at TEXT);
CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, name TEXT);
CREATE TABLE memberships (org_id INTEGER, user_id INTEGER, role TEXT);
CREATE TABLE logs (id INTEGER PRIMARY KEY, org_id INTEGER, user_id INTEGER, path TEXT, created_at TEXT);
CREATE TABLE audit (id INTEGER PRIMARY KEY, org_id INTEGER, user_id INTEGER, ip TEXT, created_at TEXT);
CREATE TABLE invoices (id INTEGER PRIMARY KEY, org_id INTEGER, user_id INTEGER, amount INTEGER);
INSERT INTO orgs VALUES (1, 'acme', NULL), (2, 'beta', NULL);
INSERT INTO users VALUES (1, 'owner@x.example', 'Olive Owner'), (2, 'member@x.example', 'Max Member'),
                         (3, 'co1@x.example', 'Co One'), (4, 'co2@x.example', 'Co Two');
INSERT INTO memberships VALUES (1, 1, 'owner'), (1, 2, 'member'), (2, 3, 'owner'), (2, 4, 'owner'), (2, 2, 'member');
INSERT INTO logs (org_id, user_id, path, created_at) VALUES (1, 2, '/a', '2026-01-01'), (1, 2, '/b', '2026-01-02'),
    (2, 2, '/c', '2026-01-03'), (1, 1, '/d', '2026-01-04');
INSERT INTO audit (org_id, user_id, ip, created_at) VALUES (1, 2, '203.0.113.9', '2026-01-01'), (1, 1, '203.0.113.1', '2026-01-01');
INSERT INTO invoices (org_id, user_id, amount) VALUES (1, 2, 100);
"#;

pub(crate) struct Setup {
    pub(crate) c: ConfigDir,
    pub(crate) identity: age::x25519::Identity,
    pub(crate) app_url: String,
}

impl Setup {
    pub(crate) fn lethe(&self) -> std::process::Command {
        let mut cmd = self.c.lethe();
        cmd.env("LETHE_PSEUDONYM_KEY", "test-pseudonym-key-0123456789");
        cmd
    }
    pub(crate) fn submit(&self, kind: &str, subject: &str, extra: &[&str]) -> (Option<i32>, Value) {
        let out = self
            .lethe()
            .args([
                "dsr",
                "submit",
                "--kind",
                kind,
                "--subject",
                subject,
                "--json",
            ])
            .args(extra)
            .output()
            .unwrap();
        (out.status.code(), stdout_json(&out))
    }
    pub(crate) async fn scalar(&self, q: &str) -> String {
        if self.app_url.starts_with("postgres") {
            let pool = sqlx::PgPool::connect(&self.app_url).await.unwrap();
            sqlx::query_scalar::<_, Option<String>>(q)
                .fetch_one(&pool)
                .await
                .unwrap()
                .unwrap_or_default()
        } else {
            let pool = sqlx::SqlitePool::connect(&self.app_url).await.unwrap();
            sqlx::query_scalar::<_, Option<String>>(q)
                .fetch_one(&pool)
                .await
                .unwrap()
                .unwrap_or_default()
        }
    }
}

pub(crate) async fn setup(pg: bool, mail: &str, http: &str) -> Option<Setup> {
    let identity = age::x25519::Identity::generate();
    let extra = format!(
        "[object_store]\nurl = \"file://objects\"\n[backup]\nrecipients = [\"{}\"]\n{DATA_MAP}",
        identity.to_public()
    );
    let (c, app_url) = if pg {
        let url = crate::common::fresh_pg_db().await?;
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        sqlx::raw_sql(
            &FIXTURE
                .replace("INTEGER PRIMARY KEY", "SERIAL PRIMARY KEY")
                .replace("created_at TEXT", "created_at DATE"),
        )
        .execute(&pool)
        .await
        .unwrap();
        (
            ConfigDir::full(Some(&url), Some(&url), "", mail, &extra),
            url,
        )
    } else {
        let c = ConfigDir::full(None, None, "", mail, &extra);
        let url = format!("sqlite://{}", c.path().join("app.db").display());
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        sqlx::raw_sql(FIXTURE).execute(&pool).await.unwrap();
        (c, url)
    };
    if !http.is_empty() {
        let cfg = std::fs::read_to_string(c.config()).unwrap();
        std::fs::write(
            c.config(),
            cfg.replace("[http]\n", &format!("[http]\n{http}\n")),
        )
        .unwrap();
    }
    for kind in [
        "dsr.process",
        "dsr.sla_report",
        "mail.flush",
        "backup.create",
    ] {
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
    })
}

macro_rules! both {
    ($($case:ident),* $(,)?) => {
        mod sqlite { $(#[tokio::test(flavor = "multi_thread")] async fn $case() { super::$case(false).await })* }
        mod postgres { $(#[tokio::test(flavor = "multi_thread")] async fn $case() { super::$case(true).await })* }
    };
}

both!(
    sole_owner_is_refused_and_a_member_is_erased_per_the_data_map,
    export_archive_holds_every_mapped_row
);

async fn sole_owner_is_refused_and_a_member_is_erased_per_the_data_map(pg: bool) {
    let Some(s) = setup(pg, "", "").await else {
        return;
    };
    let (code, v) = s.submit("erasure", "Owner@X.example", &[]);
    assert_eq!(code, Some(3), "{v}");
    assert_eq!(
        (v["state"].as_str(), v["reason"].as_str()),
        (Some("rejected"), Some("sole_owner"))
    );
    assert_eq!(v["blocking_orgs"], serde_json::json!(["1"]));
    // A co-owner is not a sole owner.
    assert_eq!(s.submit("erasure", "co1@x.example", &[]).0, Some(0));

    let (code, v) = s.submit("erasure", "member@x.example", &["--jurisdiction", "gdpr"]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["state"], "verified");
    assert_eq!(v["sla"], "on_track");
    let id = v["id"].as_i64().unwrap();
    let (code, dup) = s.submit("erasure", "member@x.example", &[]);
    assert_eq!((code, dup["reason"].as_str()), (Some(3), Some("duplicate")));

    let run = stdout_json(&run_ok(s.lethe().args(["run", "dsr.process", "--json"])));
    assert_eq!(run["status"], "succeeded", "{run}");
    let shown = stdout_json(&run_ok(s.lethe().args([
        "dsr",
        "show",
        &id.to_string(),
        "--json",
    ])));
    assert_eq!(shown["state"], "completed");
    let changed = &shown["result"]["rows_changed"];
    assert_eq!(
        (
            changed["logs"].as_i64(),
            changed["memberships"].as_i64(),
            changed["users"].as_i64()
        ),
        (Some(3), Some(2), Some(1))
    );
    assert_eq!(
        shown["result"]["retained_with_legal_basis"]["invoices"],
        "tax law: 10 years"
    );

    assert_eq!(
        s.scalar("SELECT CAST(count(*) AS TEXT) FROM logs WHERE user_id = 2")
            .await,
        "0",
        "deleted"
    );
    assert_eq!(
        s.scalar("SELECT CAST(count(*) AS TEXT) FROM logs WHERE user_id = 1")
            .await,
        "1",
        "others untouched"
    );
    let email = s.scalar("SELECT email FROM users WHERE id = 2").await;
    assert!(email.starts_with("erased-"), "email pseudonymised: {email}");
    assert_eq!(
        s.scalar("SELECT name FROM users WHERE id = 2").await,
        "Deleted user"
    );
    assert_eq!(
        s.scalar("SELECT CAST(count(*) AS TEXT) FROM audit WHERE user_id = 2 AND ip IS NULL")
            .await,
        "1",
        "audit kept, ip nulled"
    );
    assert_eq!(
        s.scalar("SELECT CAST(count(*) AS TEXT) FROM invoices WHERE user_id = 2")
            .await,
        "1",
        "retained"
    );

    let audit = String::from_utf8(run_ok(s.lethe().args(["audit", "export"])).stdout).unwrap();
    assert!(audit.contains("\"action\":\"dsr.erased\""));
    assert!(
        !audit.contains("member@x.example") && !audit.contains("Max Member"),
        "no erased values in evidence"
    );
    // The subject is gone: a new request finds nobody.
    let (code, v) = s.submit("export", "member@x.example", &[]);
    assert_eq!((code, v["reason"].as_str()), (Some(3), Some("not_found")));
}

async fn export_archive_holds_every_mapped_row(pg: bool) {
    let Some(s) = setup(pg, "", "").await else {
        return;
    };
    let (code, v) = s.submit("export", "member@x.example", &["--jurisdiction", "ccpa"]);
    assert_eq!(code, Some(0), "{v}");
    let run = stdout_json(&run_ok(s.lethe().args(["run", "dsr.process", "--json"])));
    assert_eq!(run["status"], "succeeded", "{run}");
    let shown = stdout_json(&run_ok(s.lethe().args([
        "dsr",
        "show",
        &v["id"].to_string(),
        "--json",
    ])));
    assert_eq!(shown["state"], "completed");
    let object =
        s.c.path()
            .join("objects")
            .join(shown["result"]["object"].as_str().unwrap());
    let stored = std::fs::read(&object).unwrap();
    assert!(stored.starts_with(b"age-encryption.org/v1"));
    use sha2::Digest;
    assert_eq!(
        hex::encode(sha2::Sha256::digest(&stored)),
        shown["result"]["sha256"].as_str().unwrap()
    );
    let files = crate::common::archive_texts(&stored, &s.identity);
    let logs: Vec<Value> = serde_json::from_str(&files["logs.json"]).unwrap();
    assert_eq!(logs.len(), 3, "every log row of the subject");
    assert!(logs.iter().all(|r| r["user_id"] == 2));
    let users: Vec<Value> = serde_json::from_str(&files["users.json"]).unwrap();
    assert_eq!(users[0]["email"], "member@x.example");
    assert!(
        !files.contains_key("invoices.json"),
        "not mapped for export"
    );
    run_ok(s.lethe().args(["run", "mail.flush"]));
    let mails: Vec<String> = std::fs::read_dir(s.c.path().join("mail"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert!(mails.iter().any(|m| m.contains("data export ready")
        && m.contains("To: dpo@test.example")
        && m.contains("file://")));
}

#[tokio::test(flavor = "multi_thread")]
async fn deadlines_and_extensions_follow_the_jurisdiction() {
    let s = setup(false, "", "").await.unwrap();
    let gdpr = s
        .submit("export", "member@x.example", &["--jurisdiction", "gdpr"])
        .1;
    let received =
        chrono::DateTime::parse_from_rfc3339(gdpr["received_at"].as_str().unwrap()).unwrap();
    let due = chrono::DateTime::parse_from_rfc3339(gdpr["due_at"].as_str().unwrap()).unwrap();
    let days = (due - received).num_days();
    assert!((28..=31).contains(&days), "one calendar month: {days} days");
    let id = gdpr["id"].to_string();
    run_ok(s.lethe().args([
        "dsr",
        "extend",
        &id,
        "--days",
        "40",
        "--reason",
        "complex request",
    ]));
    let out = s
        .lethe()
        .args(["dsr", "extend", &id, "--days", "30", "--reason", "more"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "GDPR: at most two further months (a policy refusal)"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("two further months"));
    let out = s
        .lethe()
        .args(["dsr", "extend", &id, "--days", "5", "--reason", ""])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a reason is required");

    let pdp = s
        .submit("erasure", "co1@x.example", &["--jurisdiction", "uu_pdp"])
        .1;
    let hours = (chrono::DateTime::parse_from_rfc3339(pdp["due_at"].as_str().unwrap()).unwrap()
        - chrono::DateTime::parse_from_rfc3339(pdp["received_at"].as_str().unwrap()).unwrap())
    .num_hours();
    assert_eq!(hours, 72, "UU PDP: 3×24 hours");
    assert_eq!(pdp["sla"], "at_risk", "under 7 days left");
    let out = s
        .lethe()
        .args([
            "dsr",
            "extend",
            &pdp["id"].to_string(),
            "--days",
            "1",
            "--reason",
            "x",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "UU PDP allows no extension");

    let ccpa = s
        .submit("export", "co2@x.example", &["--jurisdiction", "cpra"])
        .1;
    let cid = ccpa["id"].to_string();
    run_ok(s.lethe().args([
        "dsr",
        "extend",
        &cid,
        "--days",
        "45",
        "--reason",
        "allowed once",
    ]));
    assert_eq!(
        s.lethe()
            .args(["dsr", "extend", &cid, "--days", "1", "--reason", "x"])
            .output()
            .unwrap()
            .status
            .code(),
        Some(3)
    );

    for (args, hint) in [
        (vec!["--subject", "not-an-email"], "not an email"),
        (
            vec!["--subject", "a@x.example", "--jurisdiction", "narnia"],
            "unknown jurisdiction",
        ),
    ] {
        let out = s
            .lethe()
            .args(["dsr", "submit", "--kind", "export"])
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains(hint));
    }
    let list = stdout_json(&run_ok(
        s.lethe()
            .args(["dsr", "list", "--status", "verified", "--json"]),
    ));
    assert_eq!(
        list["requests"].as_array().unwrap().len(),
        3,
        "nothing half-recorded by the bad submissions"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sla_report_reaches_the_dpo_through_smtp_with_chart_text_and_csv() {
    let Some(smtp) = crate::common::server_env("LETHE_TEST_SMTP") else {
        return;
    };
    let maildir = crate::common::server_env("LETHE_TEST_MAILDIR").unwrap();
    let port = smtp.rsplit_once(':').unwrap().1;
    let mail = format!(
        "transport = \"smtp\"\n[mail.smtp]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\""
    );
    let s = setup(false, &mail, "").await.unwrap();
    s.submit("export", "member@x.example", &["--jurisdiction", "uu_pdp"]);
    s.submit("erasure", "co1@x.example", &["--jurisdiction", "gdpr"]);
    run_ok(s.lethe().args(["run", "dsr.process"]));
    s.submit("export", "co2@x.example", &["--jurisdiction", "uu_pdp"]);
    let before: std::collections::HashSet<String> = walk(std::path::Path::new(&maildir))
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    let report = stdout_json(&run_ok(
        s.lethe().args(["dsr", "report", "--send", "--json"]),
    ));
    assert_eq!(report["completed_in_period"], 2);
    assert_eq!(report["at_risk"].as_array().unwrap().len(), 1);
    assert_eq!(report["percent_within_deadline"], 100.0);
    run_ok(s.lethe().args(["run", "mail.flush"]));
    let marker = format!("SLA report {}", chrono::Utc::now().format("%Y-%m-%d"));
    let deadline = Instant::now() + Duration::from_secs(5);
    let found = loop {
        let hits: Vec<String> = walk(std::path::Path::new(&maildir))
            .into_iter()
            .filter(|(p, t)| !before.contains(p) && t.contains(&marker))
            .map(|(_, t)| t)
            .collect();
        if !hits.is_empty() || Instant::now() > deadline {
            break hits;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(found.len(), 1, "the report arrived once");
    let m = &found[0];
    assert!(m.contains("To: dpo@test.example"));
    assert!(m.contains("Content-Type: text/plain") && m.contains("Content-Type: text/html"));
    // Quoted-printable: soft line breaks may split an attribute.
    let html = m
        .replace("=\r\n", "")
        .replace("=\n", "")
        .replace("=3D", "=");
    // The one open request (UU PDP, due in 72 hours) is the longest bar, in its bucket's colour.
    let bar = format!(
        "width=\"{}\" height=\"{}\" bgcolor=\"{}\"",
        lethe::mail::BAR_MAX_PX,
        lethe::mail::BAR_HEIGHT_PX,
        lethe::dsr::BUCKET_COLORS[1]
    );
    assert!(
        html.contains(&bar) && !html.contains("<svg"),
        "HTML carries the chart as table cells"
    );
    assert!(m.contains("filename=\"dsr-sla-"), "CSV attached");
}

/// Every file below `dir`: (path, text).
fn walk(dir: &std::path::Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else if let Ok(t) = std::fs::read_to_string(e.path()) {
                out.push((e.path().display().to_string(), t));
            }
        }
    }
    out
}

fn http(
    addr: &str,
    method: &str,
    path: &str,
    key: Option<&str>,
    idem: Option<&str>,
    body: &str,
) -> (u16, Value) {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n", body.len());
    if let Some(k) = key {
        req.push_str(&format!("Authorization: Bearer {k}\r\n"));
    }
    if let Some(i) = idem {
        req.push_str(&format!("Idempotency-Key: {i}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let code = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (code, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn http_api_authenticates_is_idempotent_and_refuses_sole_owners() {
    use sha2::Digest;
    let key = "k-test-0123456789abcdef";
    let hash = hex::encode(sha2::Sha256::digest(key.as_bytes()));
    let Some(s) = setup(true, "", &format!("api_key_hashes = [\"{hash}\"]")).await else {
        return;
    };
    let port = crate::common::free_port();
    let addr = format!("127.0.0.1:{port}");
    // No scheduled job: a dsr.process fire would change the states this test reads.
    let mut cmd = s.lethe();
    cmd.env("LETHE_HTTP_LISTEN", &addr);
    let mut serve = crate::common::spawn_serve(cmd, &s.c.path().join("serve.log"), &[]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while crate::common::http_get(&addr, "/healthz").is_err() {
        assert!(Instant::now() < deadline, "serve did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let body = r#"{"kind":"erasure","subject":"member@x.example","jurisdiction":"gdpr"}"#;
    assert_eq!(http(&addr, "POST", "/v1/dsr", None, None, body).0, 401);
    assert_eq!(
        http(&addr, "POST", "/v1/dsr", Some("wrong"), None, body).0,
        401
    );
    let (code, created) = http(&addr, "POST", "/v1/dsr", Some(key), Some("req-1"), body);
    assert_eq!(code, 201, "{created}");
    let (code, again) = http(&addr, "POST", "/v1/dsr", Some(key), Some("req-1"), body);
    assert_eq!(
        (code, again["id"].clone()),
        (200, created["id"].clone()),
        "a retried submit is one request"
    );
    let (code, owner) = http(
        &addr,
        "POST",
        "/v1/dsr",
        Some(key),
        None,
        r#"{"kind":"erasure","subject":"owner@x.example"}"#,
    );
    assert_eq!(code, 409);
    assert_eq!(owner["blocking_orgs"], serde_json::json!(["1"]));
    let (code, _) = http(
        &addr,
        "POST",
        "/v1/dsr",
        Some(key),
        None,
        r#"{"kind":"export","subject":"nope"}"#,
    );
    assert_eq!(code, 422);
    let (code, got) = http(
        &addr,
        "GET",
        &format!("/v1/dsr/{}", created["id"]),
        Some(key),
        None,
        "",
    );
    assert_eq!((code, got["state"].as_str()), (200, Some("verified")));
    let (code, list) = http(&addr, "GET", "/v1/dsr?status=rejected", Some(key), None, "");
    assert_eq!(code, 200);
    assert_eq!(list["requests"].as_array().unwrap().len(), 1);
    assert_eq!(
        http(&addr, "GET", "/v1/dsr/99999", Some(key), None, "").0,
        404
    );
    // Rectification: `set` names the columns; the idempotency key is bound to the values too.
    let rect = |name: &str| {
        format!(
            r#"{{"kind":"rectification","subject":"co1@x.example","set":{{"users.name":"{name}"}}}}"#
        )
    };
    let post =
        |body: &str, idem: Option<&str>| http(&addr, "POST", "/v1/dsr", Some(key), idem, body);
    let (code, fixed) = post(&rect("Co Fixed"), Some("rect-1"));
    assert_eq!(
        (code, fixed["kind"].as_str()),
        (201, Some("rectification")),
        "{fixed}"
    );
    assert_eq!(
        post(&rect("Co Other"), Some("rect-1")).0,
        422,
        "same key, other value"
    );
    let (code, refused) = post(
        r#"{"kind":"rectification","subject":"co2@x.example","set":{"users.email":"x@x.example"}}"#,
        None,
    );
    assert_eq!(code, 422, "{refused}");
    assert!(refused["error"]
        .as_str()
        .unwrap_or("")
        .contains("users.email cannot be rectified"));
    let bad = r#"{"kind":"rectification","subject":"co2@x.example","set":{"users":"x"}}"#;
    assert_eq!(post(bad, None).0, 400);
    let export_with_set = r#"{"kind":"export","subject":"co2@x.example","set":{"users.name":"x"}}"#;
    assert_eq!(post(export_with_set, None).0, 422);
    crate::common::signal(&serve, libc::SIGTERM);
    crate::common::wait_exit(&mut serve, 30);
}

#[tokio::test(flavor = "multi_thread")]
async fn restoring_an_older_backup_re_applies_erasures() {
    let s = setup(false, "", "").await.unwrap();
    s.with_identity_file();
    let b = stdout_json(&run_ok(s.lethe().args(["run", "backup.create", "--json"])));
    let backup_id = b["result"]["id"].as_str().unwrap().to_string();
    s.submit("erasure", "member@x.example", &[]);
    run_ok(s.lethe().args(["run", "dsr.process"]));
    let target = s.c.path().join("restored.db");
    let r = stdout_json(&run_ok(
        s.lethe()
            .args(["backup", "restore", &backup_id, "--json", "--to"])
            .arg(format!("sqlite://{}", target.display())),
    ));
    assert_eq!(r["erasures_reapplied"], 1, "{r}");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", target.display()))
        .await
        .unwrap();
    let email: String = sqlx::query_scalar("SELECT email FROM users WHERE id = 2")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(
        email.starts_with("erased-"),
        "the erased subject stays erased after restore: {email}"
    );
    let logs: i64 = sqlx::query_scalar("SELECT count(*) FROM logs WHERE user_id = 2")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(logs, 0);
    let others: i64 = sqlx::query_scalar("SELECT count(*) FROM logs WHERE user_id = 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(others, 1);
}

impl Setup {
    /// Writes the backup identity to a file the config names, so restores can decrypt.
    pub(crate) fn with_identity_file(&self) {
        use age::secrecy::ExposeSecret;
        let cfg = std::fs::read_to_string(self.c.config()).unwrap();
        let id_file = self.c.path().join("age.txt");
        std::fs::write(&id_file, self.identity.to_string().expose_secret()).unwrap();
        std::fs::write(
            self.c.config(),
            cfg.replace(
                "[backup]\n",
                &format!("[backup]\nidentity_file = \"{}\"\n", id_file.display()),
            ),
        )
        .unwrap();
    }

    fn pg(&self) -> bool {
        self.app_url.starts_with("postgres")
    }
    /// Runs statements on the application database.
    pub(crate) async fn app_exec(&self, sql: &str) {
        if self.pg() {
            let pool = sqlx::PgPool::connect(&self.app_url).await.unwrap();
            sqlx::raw_sql(sql).execute(&pool).await.unwrap();
        } else {
            let pool = sqlx::SqlitePool::connect(&self.app_url).await.unwrap();
            sqlx::raw_sql(sql).execute(&pool).await.unwrap();
        }
    }
    /// Every text value of one column of Lethe's own store (`lethe.` schema on PostgreSQL).
    async fn store_texts(&self, table: &str, column: &str) -> Vec<String> {
        if self.pg() {
            let pool = sqlx::PgPool::connect(&self.app_url).await.unwrap();
            sqlx::query_scalar(&format!(
                "SELECT COALESCE({column}::text, '') FROM lethe.{table}"
            ))
            .fetch_all(&pool)
            .await
            .unwrap()
        } else {
            let url = format!("sqlite://{}", self.c.path().join("lethe.db").display());
            let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
            sqlx::query_scalar(&format!(
                "SELECT COALESCE(CAST({column} AS TEXT), '') FROM {table}"
            ))
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    }
    fn show(&self, id: i64) -> Value {
        stdout_json(&run_ok(self.lethe().args([
            "dsr",
            "show",
            &id.to_string(),
            "--json",
        ])))
    }
    fn run_process(&self) -> Value {
        crate::common::run_job(self.lethe(), "dsr.process", &[])
    }
}

/// Issue "trust at the edges": erasure and export edge cases on both databases.
mod edges {
    use super::*;

    both!(
        a_data_map_typo_is_refused_before_anything_is_erased,
        an_erasure_step_that_skips_the_subjects_rows_rolls_everything_back,
        an_unknown_request_kind_fails_instead_of_becoming_an_export,
        exports_are_deleted_when_the_link_expires_and_when_the_subject_is_erased,
        an_erased_subject_leaves_no_email_in_lethes_store_or_evidence,
        the_sla_report_is_sent_once_per_period_and_says_so,
        a_failure_after_the_erasure_committed_is_completed_by_the_retry
    );

    /// Runs statements on Lethe's own store.
    async fn store_exec(s: &Setup, sql: &str) {
        if s.pg() {
            let pool = sqlx::PgPool::connect(&s.app_url).await.unwrap();
            sqlx::raw_sql(sql).execute(&pool).await.unwrap();
        } else {
            let url = format!("sqlite://{}", s.c.path().join("lethe.db").display());
            let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
            sqlx::raw_sql(sql).execute(&pool).await.unwrap();
        }
    }

    /// Injects: the store refuses the erasure ledger's insert right after the
    /// application's transaction committed (a store outage between the two).
    /// Must hold: that run fails; the retry, finding the subject gone,
    /// completes the request (not "rejected: not_found"), writes the ledger
    /// entry and the evidence, so a restore of an older backup erases them again.
    async fn a_failure_after_the_erasure_committed_is_completed_by_the_retry(pg: bool) {
        let Some(s) = setup(pg, "", "").await else {
            return;
        };
        let (_, v) = s.submit("erasure", "member@x.example", &[]);
        let id = v["id"].as_i64().unwrap();
        store_exec(
            &s,
            if pg {
                "CREATE FUNCTION lethe.no_ledger() RETURNS trigger LANGUAGE plpgsql AS
                   $$ BEGIN RAISE EXCEPTION 'injected: store outage'; END $$;
                 CREATE TRIGGER no_ledger BEFORE INSERT ON lethe.erasure_ledger
                   FOR EACH ROW EXECUTE FUNCTION lethe.no_ledger();"
            } else {
                "CREATE TRIGGER no_ledger BEFORE INSERT ON erasure_ledger
                   BEGIN SELECT RAISE(ABORT, 'injected: store outage'); END;"
            },
        )
        .await;
        let run = s.run_process();
        assert_ne!(run["status"], "succeeded", "{run}");
        assert!(
            s.scalar("SELECT email FROM users WHERE id = 2")
                .await
                .starts_with("erased-"),
            "the application's erasure had committed"
        );
        store_exec(
            &s,
            if pg {
                "DROP TRIGGER no_ledger ON lethe.erasure_ledger"
            } else {
                "DROP TRIGGER no_ledger"
            },
        )
        .await;
        let run = s.run_process();
        assert_eq!(run["status"], "succeeded", "{run}");
        let shown = s.show(id);
        assert_eq!(shown["state"], "completed", "{shown}");
        assert_eq!(shown["result"]["subject_absent"], true, "{shown}");
        assert_eq!(
            s.store_texts("erasure_ledger", "request_id").await,
            vec![id.to_string()]
        );
        let audit = String::from_utf8(run_ok(s.lethe().args(["audit", "export"])).stdout).unwrap();
        assert_eq!(
            audit.matches("\"action\":\"dsr.erased\"").count(),
            1,
            "{audit}"
        );
    }

    /// `dsr report --send` a second time in the same report period queues
    /// nothing and says the report was already sent.
    async fn the_sla_report_is_sent_once_per_period_and_says_so(pg: bool) {
        let Some(s) = setup(pg, "", "").await else {
            return;
        };
        let send = || {
            stdout_json(&run_ok(
                s.lethe().args(["dsr", "report", "--send", "--json"]),
            ))
        };
        let first = send();
        assert_eq!(first["already_sent"], false, "{first}");
        std::thread::sleep(Duration::from_millis(1100));
        let second = send();
        assert_eq!(
            (&second["already_sent"], &second["mail_id"]),
            (&Value::Bool(true), &first["mail_id"]),
            "{second}"
        );
        let text =
            String::from_utf8(run_ok(s.lethe().args(["dsr", "report", "--send"])).stdout).unwrap();
        assert!(text.contains("already sent for the period"), "{text}");
        run_ok(s.lethe().args(["run", "mail.flush"]));
        let reports = std::fs::read_dir(s.c.path().join("mail"))
            .unwrap()
            .filter(|e| {
                std::fs::read_to_string(e.as_ref().unwrap().path())
                    .unwrap()
                    .contains("DSR SLA report")
            })
            .count();
        assert_eq!(reports, 1);
    }

    /// A misspelt org column (on SQLite a double-quoted unknown name is a string
    /// literal) must not turn an erasure into "completed, 0 rows" that also
    /// deletes rows a legal hold protects.
    async fn a_data_map_typo_is_refused_before_anything_is_erased(pg: bool) {
        let Some(s) = setup(pg, "", "").await else {
            return;
        };
        let (_, v) = s.submit("erasure", "member@x.example", &[]);
        let id = v["id"].as_i64().unwrap();
        run_ok(
            s.lethe()
                .args(["hold", "add", "--org", "1", "--reason", "litigation"]),
        );
        let cfg = std::fs::read_to_string(s.c.config()).unwrap();
        let typo = cfg.replace(
            "table = \"logs\"\nclass = \"logs\"\ntimestamp = \"created_at\"\norg = \"org_id\"",
            "table = \"logs\"\nclass = \"logs\"\ntimestamp = \"created_at\"\norg = \"org_idd\"",
        );
        assert_ne!(cfg, typo);
        std::fs::write(s.c.config(), typo).unwrap();
        let out = s
            .lethe()
            .args(["run", "dsr.process", "--json"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("lethe.toml") && err.contains("org_idd"),
            "{err}"
        );
        assert_eq!(s.show(id)["state"], "verified", "nothing was processed");
        assert_eq!(
            s.scalar("SELECT CAST(count(*) AS TEXT) FROM logs WHERE user_id = 2")
                .await,
            "3",
            "no row erased, held ones least of all"
        );
    }

    /// An application rule/trigger that silently skips deletes: the erasure of
    /// that table changes 0 of the subject's rows. That is a failure, and the
    /// steps already applied to other tables are rolled back with it.
    async fn an_erasure_step_that_skips_the_subjects_rows_rolls_everything_back(pg: bool) {
        let Some(s) = setup(pg, "", "").await else {
            return;
        };
        s.app_exec(if pg {
            "CREATE RULE keep_logs AS ON DELETE TO logs DO INSTEAD NOTHING"
        } else {
            "CREATE TRIGGER keep_logs BEFORE DELETE ON logs BEGIN SELECT RAISE(IGNORE); END"
        })
        .await;
        let (_, v) = s.submit("erasure", "member@x.example", &[]);
        let id = v["id"].as_i64().unwrap();
        let run = s.run_process();
        assert_ne!(run["status"], "succeeded", "{run}");
        assert!(
            run["error"]
                .as_str()
                .unwrap_or("")
                .contains("`logs` changed 0 of the subject's 3"),
            "{run}"
        );
        assert_eq!(s.show(id)["state"], "failed");
        assert_eq!(
            s.scalar("SELECT email FROM users WHERE id = 2").await,
            "member@x.example",
            "the users step (after logs) never committed"
        );
        assert_eq!(
            s.scalar(
                "SELECT CAST(count(*) AS TEXT) FROM audit WHERE user_id = 2 AND ip IS NOT NULL"
            )
            .await,
            "1",
            "the audit step (before logs) was rolled back"
        );
        let audit = String::from_utf8(run_ok(s.lethe().args(["audit", "export"])).stdout).unwrap();
        assert!(!audit.contains("\"action\":\"dsr.erased\""));
    }

    /// A request kind this build does not know (written by a newer Lethe) is an
    /// error; it is never processed as an export.
    async fn an_unknown_request_kind_fails_instead_of_becoming_an_export(pg: bool) {
        let Some(s) = setup(pg, "", "").await else {
            return;
        };
        let (_, v) = s.submit("export", "member@x.example", &[]);
        let id = v["id"].as_i64().unwrap();
        if pg {
            let pool = sqlx::PgPool::connect(&s.app_url).await.unwrap();
            sqlx::raw_sql(&format!(
                "ALTER TABLE lethe.dsr_requests DROP CONSTRAINT dsr_requests_kind_check;
                 UPDATE lethe.dsr_requests SET kind = 'restriction' WHERE id = {id}"
            ))
            .execute(&pool)
            .await
            .unwrap();
        } else {
            use sqlx::Connection;
            let url = format!("sqlite://{}", s.c.path().join("lethe.db").display());
            let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
            sqlx::raw_sql(&format!(
                "PRAGMA ignore_check_constraints = ON;
                 UPDATE dsr_requests SET kind = 'restriction' WHERE id = {id}"
            ))
            .execute(&mut conn)
            .await
            .unwrap();
        }
        let run = s.run_process();
        assert_ne!(run["status"], "succeeded", "{run}");
        assert!(
            run["error"]
                .as_str()
                .unwrap_or("")
                .contains("`restriction` is unknown"),
            "{run}"
        );
        let shown = s.show(id);
        assert_eq!(shown["state"], "failed", "{shown}");
        assert!(
            !s.c.path().join("objects").exists()
                || std::fs::read_dir(s.c.path().join("objects"))
                    .unwrap()
                    .count()
                    == 0,
            "no export archive was written"
        );
    }

    /// Export archives hold every row of a person: they are deleted when their
    /// link expires (`dsr.export_link_ttl`) and at once when the person is erased.
    async fn exports_are_deleted_when_the_link_expires_and_when_the_subject_is_erased(pg: bool) {
        let Some(s) = setup(pg, "", "").await else {
            return;
        };
        let cfg = std::fs::read_to_string(s.c.config()).unwrap();
        std::fs::write(
            s.c.config(),
            cfg.replacen("[dsr]\n", "[dsr]\nexport_link_ttl = \"3s\"\n", 1),
        )
        .unwrap();
        let (_, member) = s.submit("export", "member@x.example", &[]);
        let (_, co2) = s.submit("export", "co2@x.example", &[]);
        let (_, erase) = s.submit("erasure", "co2@x.example", &[]);
        let run = s.run_process();
        assert_eq!(run["status"], "succeeded", "{run}");
        let object = |id: &Value| {
            let shown = s.show(id.as_i64().unwrap());
            s.c.path()
                .join("objects")
                .join(shown["result"]["object"].as_str().unwrap())
        };
        let (member_obj, co2_obj) = (object(&member["id"]), object(&co2["id"]));
        assert!(
            member_obj.exists(),
            "the member's export is there until its link expires"
        );
        assert!(
            !co2_obj.exists(),
            "the erased subject's export went with the erasure"
        );
        let erased = s.show(erase["id"].as_i64().unwrap());
        assert_eq!(erased["result"]["exports_deleted"], 1, "{erased}");

        std::thread::sleep(Duration::from_millis(3200));
        let run = s.run_process();
        assert_eq!(run["result"]["exports_expired"], 1, "{run}");
        assert!(!member_obj.exists(), "expired export deleted");
        let run = s.run_process();
        assert_eq!(run["result"]["exports_expired"], 0, "deleted once: {run}");
        let audit = String::from_utf8(run_ok(s.lethe().args(["audit", "export"])).stdout).unwrap();
        let reasons: Vec<Value> = audit
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["action"] == "dsr.export_deleted")
            .map(|e| {
                let d: Value = match &e["details"] {
                    Value::String(t) => serde_json::from_str(t).unwrap(),
                    other => other.clone(),
                };
                d["reason"].clone()
            })
            .collect();
        assert_eq!(reasons, vec!["subject erased", "link expired"], "{audit}");
    }

    /// Lethe keeps the minimum: after an erasure its own rows and its evidence
    /// name the person by a keyed pseudonym only.
    async fn an_erased_subject_leaves_no_email_in_lethes_store_or_evidence(pg: bool) {
        let Some(s) = setup(pg, "", "").await else {
            return;
        };
        let email = "member@x.example";
        let hold = stdout_json(&run_ok(s.lethe().args([
            "hold",
            "add",
            "--subject",
            email,
            "--reason",
            "pending audit",
            "--json",
        ])));
        run_ok(s.lethe().args([
            "hold",
            "release",
            &hold["id"].to_string(),
            "--reason",
            "audit closed",
        ]));
        let (_, export) = s.submit("export", email, &[]);
        let (_, erase) = s.submit("erasure", email, &[]);
        let run = s.run_process();
        assert_eq!(run["status"], "succeeded", "{run}");
        for (table, column) in [
            ("dsr_requests", "subject"),
            ("dsr_requests", "detail"),
            ("dsr_requests", "result"),
            ("legal_holds", "value"),
        ] {
            let values = s.store_texts(table, column).await;
            assert!(
                values.iter().all(|v| !v.contains(email)),
                "{table}.{column} still names the subject: {values:?}"
            );
        }
        for id in [&export["id"], &erase["id"]] {
            let shown = s.show(id.as_i64().unwrap());
            assert!(
                shown["subject"].as_str().unwrap().starts_with("pseudonym:"),
                "{shown}"
            );
        }
        let audit = String::from_utf8(run_ok(s.lethe().args(["audit", "export"])).stdout).unwrap();
        assert!(!audit.contains(email), "the chain never names the subject");
        if !pg {
            // Nor do the SQLite files' bytes (free pages, the WAL).
            for f in ["app.db", "lethe.db", "lethe.db-wal", "app.db-wal"] {
                let path = s.c.path().join(f);
                let Ok(bytes) = std::fs::read(&path) else {
                    continue;
                };
                assert!(
                    !bytes.windows(email.len()).any(|w| w == email.as_bytes()),
                    "{f} still holds the erased email in its bytes"
                );
            }
        }
        let pseudonym = s.show(erase["id"].as_i64().unwrap())["subject"].clone();
        assert!(
            audit.contains(pseudonym.as_str().unwrap()),
            "events about the subject are linked by the pseudonym"
        );
    }
}

/// GDPR Art. 12(3): an extension is valid only when decided, and told to the
/// subject, within the deadline in force. Under a fake clock: a request due
/// 2026-02-28 cannot be extended on 2026-03-12 (exit 3), and it stays
/// overdue in `dsr list` and in the SLA report; one extended in time, with
/// the subject told, moves its deadline and records when they were told.
#[tokio::test(flavor = "multi_thread")]
async fn an_extension_after_the_deadline_is_refused_and_the_miss_stays_visible() {
    let Some(lib) = crate::common::server_env("LETHE_TEST_LIBFAKETIME") else {
        return;
    };
    let s = setup(false, "", "").await.unwrap();
    let at = |t: &str| crate::common::faked(s.lethe(), &lib, t, 1);
    let submit = |who: &str| {
        stdout_json(&run_ok(at("2026-01-31 10:00:00").args([
            "dsr",
            "submit",
            "--kind",
            "export",
            "--subject",
            who,
            "--jurisdiction",
            "gdpr",
            "--json",
        ])))
    };
    let late = submit("member@x.example");
    let in_time = submit("co1@x.example");
    // The fake clock runs on from its start: compare to the second.
    let second = |v: &Value| v.as_str().unwrap_or("")[..19].to_string();
    assert_eq!(second(&late["due_at"]), "2026-02-28T10:00:00");
    let (late_id, ok_id) = (late["id"].to_string(), in_time["id"].to_string());

    let out = at("2026-03-12 09:00:00")
        .args([
            "dsr",
            "extend",
            &late_id,
            "--days",
            "30",
            "--reason",
            "complex",
            "--notified-at",
            "2026-03-12T08:00:00Z",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("has passed"), "{err}");

    // Told after its deadline: not valid either. Told in time: extended.
    let out = at("2026-02-20 09:00:00")
        .args([
            "dsr",
            "extend",
            &ok_id,
            "--days",
            "30",
            "--reason",
            "complex",
            "--notified-at",
            "2026-02-19T17:00:00Z",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = stdout_json(&run_ok(
        at("2026-02-20 09:00:00").args(["dsr", "show", &ok_id, "--json"]),
    ));
    assert_eq!(second(&shown["due_at"]), "2026-03-30T10:00:00");
    assert_eq!(shown["extension_notified_at"], "2026-02-19T17:00:00Z");

    let list = stdout_json(&run_ok(
        at("2026-03-12 09:00:00").args(["dsr", "list", "--json"]),
    ));
    let sla = |id: &str| {
        list["requests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id.parse::<i64>().unwrap())
            .map(|r| r["sla"].clone())
            .unwrap()
    };
    assert_eq!(sla(&late_id), "overdue");
    assert_eq!(sla(&ok_id), "on_track", "extended in time to 2026-03-30");
    let report = stdout_json(&run_ok(
        at("2026-03-12 09:00:00").args(["dsr", "report", "--json"]),
    ));
    let overdue: Vec<String> = report["overdue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].to_string())
        .collect();
    assert_eq!(overdue, vec![late_id]);
}
