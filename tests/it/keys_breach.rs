//! Key rotation against the local keyring and against moto's KMS over HTTP;
//! breach deadlines, reminders exactly once, escalation, through the SMTP sink.

use std::time::Duration;

use crate::common::{run_ok, stdout_json, ConfigDir};
use serde_json::Value;

const APP: &str = r#"
[app]
subjects = { table = "users", id = "id", email = "email" }
orgs = { table = "orgs", id = "id", closed_at = "closed_at" }
"#;

async fn setup(keys: &str, mail: &str) -> ConfigDir {
    let c = ConfigDir::full(None, None, "", mail, &format!("{APP}\n[keys]\n{keys}\n"));
    let url = format!("sqlite://{}", c.path().join("app.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT);
         CREATE TABLE orgs (id INTEGER PRIMARY KEY, closed_at TEXT);
         INSERT INTO orgs VALUES (1, NULL), (2, NULL), (3, datetime('now', '-400 days'));",
    )
    .execute(&pool)
    .await
    .unwrap();
    for kind in ["keys.rotate", "breach.tick", "mail.flush"] {
        c.job(
            kind,
            &format!("kind = \"{kind}\"\nschedule = \"0 0 3 * * *\"\nmax_attempts = 1\n"),
        );
    }
    run_ok(c.lethe().arg("migrate"));
    c
}

fn rotate(c: &ConfigDir) -> Value {
    let v = stdout_json(&run_ok(c.lethe_aws().args(["keys", "rotate", "--json"])));
    v
}

fn status(c: &ConfigDir) -> Vec<Value> {
    let v = stdout_json(&run_ok(c.lethe_aws().args(["keys", "status", "--json"])));
    v["orgs"].as_array().unwrap().clone()
}

/// Shared by both providers: create, rotate DEKs and KEKs, re-wrap, shred.
fn rotation_lifecycle(c: &ConfigDir) -> Value {
    let first = rotate(c);
    assert_eq!(first["keks_created"], 3, "{first}");
    assert_eq!(first["deks_created"], 2, "open orgs get a DEK");
    assert_eq!(
        first["shredded"],
        serde_json::json!(["3"]),
        "org 3 closed 400 days ago is crypto-shredded"
    );
    let st = status(c);
    assert_eq!(st[0]["active_version"], 1);
    assert_eq!(st[2]["shredded"], true);
    assert_eq!(
        st[2]["active_version"],
        Value::Null,
        "its wrapped DEKs are destroyed"
    );

    let again = rotate(c);
    assert_eq!(
        (
            again["deks_created"].as_u64(),
            again["rewrapped"].as_u64(),
            again["keks_created"].as_u64()
        ),
        (Some(0), Some(0), Some(0))
    );

    // Past both rotation periods: a new DEK version, a KEK rotation, and the old DEK re-wrapped.
    std::thread::sleep(Duration::from_millis(2100));
    let later = rotate(c);
    assert_eq!(later["deks_created"], 2, "{later}");
    assert_eq!(later["keks_rotated"], 2);
    assert!(
        later["rewrapped"].as_u64().unwrap() >= 2,
        "older DEKs re-wrapped under the rotated KEK: {later}"
    );
    let st = status(c);
    assert_eq!(st[0]["active_version"], 2);
    assert_eq!(st[0]["stale_wraps"], 0);
    let audit = String::from_utf8(run_ok(c.lethe().args(["audit", "export"])).stdout).unwrap();
    for action in [
        "keys.dek_rotated",
        "keys.kek_rotated",
        "keys.rewrapped",
        "keys.shredded",
    ] {
        assert!(
            audit.contains(&format!("\"action\":\"{action}\"")),
            "{action} evidence"
        );
    }
    first
}

#[tokio::test(flavor = "multi_thread")]
async fn local_keyring_rotates_rewraps_and_shreds() {
    let c = setup(
        "provider = \"local\"\ndek_rotation = \"2s\"\nkek_rotation = \"2s\"\nshred_after = \"30d\"",
        "",
    )
    .await;
    rotation_lifecycle(&c);
    let ring: Value =
        serde_json::from_str(&std::fs::read_to_string(c.path().join("keyring.json")).unwrap())
            .unwrap();
    let shredded: Vec<&Value> = ring["keks"]
        .as_object()
        .unwrap()
        .values()
        .filter(|k| !k["pending_deletion"].is_null())
        .collect();
    assert_eq!(shredded.len(), 1);
    assert_eq!(
        shredded[0]["versions"].as_array().unwrap().len(),
        0,
        "key material destroyed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn aws_kms_rotates_rewraps_and_schedules_deletion() {
    let Some(moto) = crate::common::server_env("LETHE_TEST_MOTO_URL") else {
        return;
    };
    let keys = format!("provider = \"aws\"\nkms_endpoint = \"{moto}\"\nregion = \"us-east-1\"\ndek_rotation = \"2s\"\nkek_rotation = \"2s\"\nconcurrency = 4");
    let c = setup(&keys, "").await;
    rotation_lifecycle(&c);
    let st = status(&c);
    let kms = aws_sdk_kms::Client::from_conf(
        aws_sdk_kms::config::Builder::new()
            .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
            .http_client(lethe::aws::http_client())
            .region(aws_sdk_kms::config::Region::new("us-east-1"))
            .endpoint_url(&moto)
            .credentials_provider(aws_sdk_kms::config::Credentials::new(
                "testing", "testing", None, None, "test",
            ))
            .build(),
    );
    let shredded = st[2]["kek_id"].as_str().unwrap();
    let d = kms.describe_key().key_id(shredded).send().await.unwrap();
    assert_eq!(
        d.key_metadata().unwrap().key_state().unwrap().as_str(),
        "PendingDeletion"
    );
    let live = st[0]["kek_id"].as_str().unwrap();
    let d = kms.describe_key().key_id(live).send().await.unwrap();
    assert_eq!(
        d.key_metadata().unwrap().key_state().unwrap().as_str(),
        "Enabled"
    );
}

fn hours_ago(h: i64) -> String {
    (chrono::Utc::now() - chrono::Duration::hours(h)).to_rfc3339()
}

#[tokio::test(flavor = "multi_thread")]
async fn breach_reminders_are_sent_once_and_stop_when_notified() {
    let Some(smtp) = crate::common::server_env("LETHE_TEST_SMTP") else {
        return;
    };
    let maildir = crate::common::server_env("LETHE_TEST_MAILDIR").unwrap();
    let port = smtp.rsplit_once(':').unwrap().1;
    let c = setup("", &format!("transport = \"smtp\"\n[mail.smtp]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"")).await;
    let title = format!("Leaked export {}", uuid::Uuid::new_v4());
    let b = stdout_json(&run_ok(c.lethe().args([
        "breach",
        "open",
        "--title",
        &title,
        "--detected-at",
        &hours_ago(70),
        "--org",
        "2",
        "--subjects",
        "120",
        "--json",
    ])));
    let parties: Vec<&str> = b["parties"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["party"].as_str().unwrap())
        .collect();
    assert_eq!(parties.len(), 3, "GDPR: authority, controller, subjects");
    let id = b["id"].to_string();

    let t1 = stdout_json(&run_ok(c.lethe().args(["run", "breach.tick", "--json"])));
    let sent = t1["result"]["sent"].as_array().unwrap();
    assert_eq!(sent.len(), 6, "3 parties × (ops, dpo): {t1}");
    assert!(
        sent.iter().all(|s| s["mark"] == "T-6h"),
        "only the most urgent mark passed: {t1}"
    );
    let t2 = stdout_json(&run_ok(c.lethe().args(["run", "breach.tick", "--json"])));
    assert_eq!(
        t2["result"]["sent"].as_array().unwrap().len(),
        0,
        "no duplicate reminder"
    );

    run_ok(c.lethe().args([
        "breach",
        "notify",
        &id,
        "--party",
        "authority",
        "--note",
        "DPA case 2026-117",
    ]));
    let again = c
        .lethe()
        .args(["breach", "notify", &id, "--party", "authority"])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
    let list = stdout_json(&run_ok(c.lethe().args(["breach", "list", "--json"])));
    let authority = list["breaches"][0]["parties"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["party"] == "authority")
        .unwrap()
        .clone();
    assert!(authority["notified_at"].is_string());

    // A breach past its deadline escalates, once.
    let late = stdout_json(&run_ok(c.lethe().args([
        "breach",
        "open",
        "--title",
        &format!("{title} late"),
        "--detected-at",
        &hours_ago(80),
        "--json",
    ])));
    let t3 = stdout_json(&run_ok(c.lethe().args(["run", "breach.tick", "--json"])));
    let sent = t3["result"]["sent"].as_array().unwrap();
    assert!(
        sent.iter()
            .all(|s| s["breach"] == late["id"] && s["mark"] == "overdue"),
        "{t3}"
    );
    assert_eq!(sent.len(), 6);

    run_ok(c.lethe().args(["run", "mail.flush"]));
    let mut found = 0;
    let mut overdue = 0;
    for e in walkdir(std::path::Path::new(&maildir)) {
        if e.contains(&title) {
            found += 1;
            if e.contains("Subject: [lethe] OVERDUE: breach") {
                overdue += 1;
            }
        }
    }
    // 2 opened mails each, 6 reminders, 6 escalations.
    assert_eq!((found, overdue), (4 + 6 + 6, 6));
}

fn walkdir(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else if let Ok(t) = std::fs::read_to_string(e.path()) {
                out.push(t);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_breach_input_is_refused_with_exit_2() {
    let c = setup("", "").await;
    let long_title = "leak ".repeat(70);
    for args in [
        vec!["--title", "x", "--detected-at", "yesterday"],
        vec![
            "--title",
            "x",
            "--detected-at",
            "2026-01-01T00:00:00Z",
            "--jurisdiction",
            "mars",
        ],
        vec!["--title", " ", "--detected-at", "2026-01-01T00:00:00Z"],
        vec![
            "--title",
            &long_title,
            "--detected-at",
            "2026-01-01T00:00:00Z",
        ],
        vec!["--title", "x", "--detected-at", "2999-01-01T00:00:00Z"],
    ] {
        let out = c
            .lethe()
            .args(["breach", "open"])
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let list = stdout_json(&run_ok(c.lethe().args(["breach", "list", "--json"])));
    assert_eq!(
        list["breaches"].as_array().unwrap().len(),
        0,
        "nothing half-recorded"
    );
}

/// Rows of the app's key table as (org, version, state, wrapped non-empty).
async fn app_keys(c: &ConfigDir) -> Vec<(i64, i64, String, String)> {
    let url = format!("sqlite://{}", c.path().join("app.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query_as("SELECT org_id, version, state, wrapped_key FROM org_data_keys ORDER BY 1, 2")
        .fetch_all(&pool)
        .await
        .unwrap()
}

async fn app_sql(c: &ConfigDir, sql: &str) {
    let url = format!("sqlite://{}", c.path().join("app.db").display());
    crate::common::app_exec(&url, sql).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_apps_key_table_follows_rotation_crashes_and_shredding() {
    let c = ConfigDir::full(
        None,
        None,
        "",
        "",
        &format!(
            "{APP}keys = {{ table = \"org_data_keys\" }}\n\n[keys]\nprovider = \"local\"\ndek_rotation = \"4s\"\nkek_rotation = \"4s\"\nshred_after = \"30d\"\n"
        ),
    );
    app_sql(
        &c,
        "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT);
         CREATE TABLE orgs (id INTEGER PRIMARY KEY, closed_at TEXT);
         INSERT INTO orgs VALUES (1, NULL), (2, NULL), (3, NULL);
         CREATE TABLE org_data_keys (org_id INTEGER NOT NULL, version INTEGER NOT NULL, wrapped_key TEXT NOT NULL,
             kms_key_id TEXT NOT NULL, state TEXT NOT NULL, created_at TEXT NOT NULL, PRIMARY KEY (org_id, version));",
    )
    .await;
    run_ok(c.lethe().arg("migrate"));

    rotate(&c);
    let first = app_keys(&c).await;
    assert_eq!(
        first
            .iter()
            .map(|k| (k.0, k.1, k.2.as_str()))
            .collect::<Vec<_>>(),
        [(1, 1, "active"), (2, 1, "active"), (3, 1, "active")]
    );
    assert!(
        first.iter().all(|k| !k.3.is_empty()),
        "wrapped keys written"
    );

    // The wrapped keys live in the application's table only: Lethe's store
    // keeps versions and dates, not a copy.
    let store_url = format!("sqlite://{}", c.path().join("lethe.db").display());
    let store = crate::common::app_strings(&store_url, "SELECT wrapped FROM org_deks").await;
    assert_eq!(store, ["", "", ""], "the store holds no wrapped key");

    // A crash after the store's commit, before the table was written: the
    // next run adds the version with a new key (no value can be under a key
    // the application never saw); the other orgs' keys stay as they were.
    app_sql(&c, "DELETE FROM org_data_keys WHERE org_id = 2").await;
    let repaired = rotate(&c);
    let now = app_keys(&c).await;
    assert_eq!(now.len(), 3, "{repaired}");
    assert_eq!(
        (now[0].clone(), now[2].clone()),
        (first[0].clone(), first[2].clone())
    );
    assert_eq!((now[1].0, now[1].1, now[1].2.as_str()), (2, 1, "active"));
    assert_ne!(now[1].3, first[1].3, "a new key for org 2's version 1");
    let first = now;

    // Past both rotation periods: version 2 added, version 1 re-wrapped under the rotated KEK.
    std::thread::sleep(Duration::from_millis(4100));
    rotate(&c);
    let later = app_keys(&c).await;
    assert_eq!(later.len(), 6, "{later:?}");
    for org in 1..=3 {
        let v1 = later.iter().find(|k| k.0 == org && k.1 == 1).unwrap();
        let v1_before = first.iter().find(|k| k.0 == org).unwrap();
        assert_ne!(v1.3, v1_before.3, "org {org}: version 1 re-wrapped");
        assert!(later
            .iter()
            .any(|k| k.0 == org && k.1 == 2 && k.2 == "active"));
        // No column is encrypted here, so nothing is under version 1: retired at once.
        assert_eq!(v1.2, "retired", "org {org}");
    }

    // Org 3 closes and passes shred_after: every version of it destroyed, the others untouched.
    app_sql(
        &c,
        "UPDATE orgs SET closed_at = datetime('now', '-400 days') WHERE id = 3",
    )
    .await;
    let shred = rotate(&c);
    assert_eq!(shred["shredded"], serde_json::json!(["3"]), "{shred}");
    let after = app_keys(&c).await;
    let org3 = |keys: &[(i64, i64, String, String)]| -> Vec<(i64, i64, String, String)> {
        keys.iter().filter(|k| k.0 == 3).cloned().collect()
    };
    assert_eq!(org3(&after).len(), 2, "{after:?}");
    for k in &after {
        if k.0 == 3 {
            assert_eq!((k.2.as_str(), k.3.as_str()), ("destroyed", ""), "{k:?}");
        } else {
            let live = k.2 == "active" || k.2 == "retired";
            assert!(live && !k.3.is_empty(), "org {} untouched: {k:?}", k.0);
        }
    }
    // Idempotent, and a destroyed version is never written again.
    rotate(&c);
    assert_eq!(org3(&app_keys(&c).await), org3(&after));
    let audit = String::from_utf8(run_ok(c.lethe().args(["audit", "export"])).stdout).unwrap();
    for action in ["keys.app_table_synced", "keys.app_table_shredded"] {
        assert!(
            audit.contains(&format!("\"action\":\"{action}\"")),
            "{action} evidence"
        );
    }
}

/// Org 3 closed 400 days ago, past `shred_after`: a legal hold on it, then a
/// class kept `org_closed+2y`, each postpone the shred with evidence written
/// once per reason; once neither holds, the keys are shredded.
#[tokio::test(flavor = "multi_thread")]
async fn a_shred_waits_for_a_hold_and_for_an_org_closed_retention() {
    let c = setup("provider = \"local\"\nshred_after = \"30d\"", "").await;
    let url = format!("sqlite://{}", c.path().join("app.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::raw_sql("CREATE TABLE audit_log (id INTEGER PRIMARY KEY, org_id INTEGER, at TEXT)")
        .execute(&pool)
        .await
        .unwrap();
    let cfg = std::fs::read_to_string(c.config()).unwrap();
    let kept = |rule: &str| {
        format!("{cfg}\n[[data_map]]\ntable = \"audit_log\"\nclass = \"audit\"\norg = \"org_id\"\ntimestamp = \"at\"\nretention = [\"5y\", \"{rule}\"]\n")
    };
    std::fs::write(c.config(), kept("org_closed+2y")).unwrap();
    let hold = stdout_json(&run_ok(c.lethe().args([
        "hold",
        "add",
        "--org",
        "3",
        "--reason",
        "litigation",
        "--json",
    ])));
    let postponed = |v: &Value| {
        v["shred_postponed"][0]["reason"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };

    let first = rotate(&c);
    assert_eq!(first["shredded"], serde_json::json!([]), "{first}");
    assert_eq!(
        postponed(&first),
        format!("legal hold {} on the org", hold["id"])
    );
    assert_eq!(postponed(&rotate(&c)), postponed(&first), "still held");
    let id = hold["id"].to_string();
    run_ok(
        c.lethe()
            .args(["hold", "release", &id, "--reason", "settled"]),
    );
    let second = rotate(&c);
    assert_eq!(second["shredded"], serde_json::json!([]), "{second}");
    assert!(
        postponed(&second).contains("class audit keeps the org's data until org_closed+2y"),
        "{second}"
    );
    assert_eq!(
        status(&c)[2]["shred_postponed"],
        postponed(&second).as_str()
    );

    std::fs::write(c.config(), kept("org_closed+1y")).unwrap();
    let third = rotate(&c);
    assert_eq!(third["shredded"], serde_json::json!(["3"]), "{third}");

    let audit = String::from_utf8(run_ok(c.lethe().args(["audit", "export"])).stdout).unwrap();
    let events: Vec<Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["action"] == "keys.shred_postponed")
        .collect();
    assert_eq!(
        events.len(),
        2,
        "one piece of evidence per reason: {events:?}"
    );
    assert_eq!(
        events[0]["details"]["until"],
        Value::Null,
        "a hold has no end date"
    );
    assert!(events[1]["details"]["until"].is_string(), "{}", events[1]);
}
