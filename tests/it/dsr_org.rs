//! Processor-scoped subject requests (`dsr submit --org ORG`): the org, as
//! controller, asks about one subject, and only its workspace is touched.
//! The fixture is `dsr.rs`'s: org 1 (owner 1 sole, member 2), org 2 (owners
//! 3 and 4, member 2); member 2 has logs in both orgs.

use crate::common::{run_ok, stdout_json};
use crate::dsr::{setup, Setup};
use serde_json::Value;

macro_rules! both {
    ($($case:ident),* $(,)?) => {
        mod sqlite { $(#[tokio::test(flavor = "multi_thread")] async fn $case() { super::$case(false).await })* }
        mod postgres { $(#[tokio::test(flavor = "multi_thread")] async fn $case() { super::$case(true).await })* }
    };
}

both!(
    an_erasure_for_one_org_touches_only_its_rows_until_it_is_the_last,
    an_export_for_one_org_holds_only_its_rows
);

async fn count(s: &Setup, sql: &str) -> i64 {
    s.scalar(&format!("SELECT CAST(count(*) AS TEXT) FROM {sql}"))
        .await
        .parse()
        .unwrap()
}

fn show(s: &Setup, id: &Value) -> Value {
    stdout_json(&run_ok(s.lethe().args([
        "dsr",
        "show",
        &id.to_string(),
        "--json",
    ])))
}

fn process(s: &Setup) {
    let run = stdout_json(&run_ok(s.lethe().args(["run", "dsr.process", "--json"])));
    assert_eq!(run["status"], "succeeded", "{run}");
}

async fn an_erasure_for_one_org_touches_only_its_rows_until_it_is_the_last(pg: bool) {
    let Some(s) = setup(pg, "", "").await else {
        return;
    };
    // Bad scopes: an org that does not exist, an empty one.
    for (org, says) in [
        ("99", "org `99` is not in the application database"),
        (" ", "org must name an org"),
    ] {
        let out = s
            .lethe()
            .args(["dsr", "submit", "--kind", "erasure"])
            .args(["--subject", "member@x.example", "--org", org])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
    }
    // The sole-owner rule applies within the org: owner 1 owns org 1 alone.
    let (code, v) = s.submit("erasure", "owner@x.example", &["--org", "1"]);
    assert_eq!((code, v["reason"].as_str()), (Some(3), Some("sole_owner")));
    assert_eq!(v["blocking_orgs"], serde_json::json!(["1"]));
    // An org under a legal hold: its requests erase nothing.
    let add = [
        "hold",
        "add",
        "--org",
        "2",
        "--reason",
        "litigation",
        "--json",
    ];
    let hold = stdout_json(&run_ok(s.lethe().args(add)))["id"].to_string();
    let (code, v) = s.submit("erasure", "co1@x.example", &["--org", "2"]);
    assert_eq!((code, v["reason"].as_str()), (Some(3), Some("legal_hold")));
    let release = ["hold", "release", &hold, "--reason", "settled"];
    run_ok(s.lethe().args(release));

    // Org 2 asks: member 2 also belongs to org 1, so only org 2's rows go.
    let (code, v) = s.submit("erasure", "member@x.example", &["--org", "2"]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["org"], "2");
    let (code, dup) = s.submit("erasure", "member@x.example", &["--org", "2"]);
    assert_eq!((code, dup["reason"].as_str()), (Some(3), Some("duplicate")));
    process(&s);
    let shown = show(&s, &v["id"]);
    assert_eq!(shown["state"], "completed", "{shown}");
    assert_eq!(shown["result"]["whole_subject"], false, "{shown}");
    let changed = &shown["result"]["rows_changed"];
    assert_eq!(
        (changed["logs"].as_i64(), changed["memberships"].as_i64()),
        (Some(1), Some(1)),
        "{shown}"
    );
    assert!(
        changed.get("users").is_none(),
        "the account is shared: {shown}"
    );
    assert_eq!(count(&s, "logs WHERE user_id = 2 AND org_id = 2").await, 0);
    assert_eq!(count(&s, "logs WHERE user_id = 2 AND org_id = 1").await, 2);
    assert_eq!(count(&s, "memberships WHERE user_id = 2").await, 1);
    assert_eq!(
        count(&s, "audit WHERE user_id = 2 AND ip IS NOT NULL").await,
        1
    );
    assert_eq!(
        s.scalar("SELECT email FROM users WHERE id = 2").await,
        "member@x.example",
        "the account stays"
    );
    // Still a user: Lethe keeps the email on the request (no pseudonym yet).
    assert_eq!(shown["subject"], "member@x.example");

    // Org 1 asks next: its membership is now their only one, so the whole
    // subject is erased, as an org's deletion erases its only-members.
    let (code, v) = s.submit("erasure", "member@x.example", &["--org", "1"]);
    assert_eq!(code, Some(0), "{v}");
    process(&s);
    let shown = show(&s, &v["id"]);
    assert_eq!(shown["result"]["whole_subject"], true, "{shown}");
    let email = s.scalar("SELECT email FROM users WHERE id = 2").await;
    assert!(email.starts_with("erased-"), "{email}");
    assert_eq!(count(&s, "logs WHERE user_id = 2").await, 0);
    assert_eq!(count(&s, "invoices WHERE user_id = 2").await, 1, "retained");
    assert!(
        shown["subject"].as_str().unwrap().starts_with("pseudonym:"),
        "{shown}"
    );
    // Co-owner 3 belongs to org 2 alone but left rows in org 1: org 2's
    // request must not reach them, so it stays an erasure in org 2 only.
    s.app_exec(
        "INSERT INTO logs (org_id, user_id, path, created_at) VALUES (1, 3, '/old', '2026-01-05')",
    )
    .await;
    let (code, v) = s.submit("erasure", "co1@x.example", &["--org", "2"]);
    assert_eq!(code, Some(0), "{v}");
    process(&s);
    let shown = show(&s, &v["id"]);
    assert_eq!(shown["result"]["whole_subject"], false, "{shown}");
    assert_eq!(count(&s, "logs WHERE user_id = 3 AND org_id = 1").await, 1);
    assert_eq!(count(&s, "memberships WHERE user_id = 3").await, 0);

    let audit = String::from_utf8(run_ok(s.lethe().args(["audit", "export"])).stdout).unwrap();
    let erased: Vec<Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["action"] == "dsr.erased")
        .collect();
    assert_eq!(erased.len(), 3);
    assert_eq!(erased[0]["details"]["org"], "2", "{}", erased[0]);
    assert!(!audit.contains("member@x.example"));
}

async fn an_export_for_one_org_holds_only_its_rows(pg: bool) {
    let Some(s) = setup(pg, "", "").await else {
        return;
    };
    let (code, v) = s.submit("export", "member@x.example", &["--org", "1"]);
    assert_eq!(code, Some(0), "{v}");
    // Another org may ask about the same subject at the same time.
    let (code, other) = s.submit("export", "member@x.example", &["--org", "2"]);
    assert_eq!(code, Some(0), "{other}");
    process(&s);
    let shown = show(&s, &v["id"]);
    assert_eq!(shown["state"], "completed", "{shown}");
    let stored = std::fs::read(
        s.c.path()
            .join("objects")
            .join(shown["result"]["object"].as_str().unwrap()),
    )
    .unwrap();
    let files = crate::common::archive_texts(&stored, &s.identity);
    let logs: Vec<Value> = serde_json::from_str(&files["logs.json"]).unwrap();
    assert_eq!(logs.len(), 2, "org 1's log rows only");
    assert!(logs.iter().all(|r| r["org_id"] == 1 && r["user_id"] == 2));
    let members: Vec<Value> = serde_json::from_str(&files["memberships.json"]).unwrap();
    assert_eq!(members.len(), 1);
    assert!(
        !files.contains_key("users.json"),
        "the shared account is not org 1's table: {:?}",
        files.keys()
    );
    assert!(files["README.txt"].contains("limited to org 1's workspace"));
    assert_eq!(shown["result"]["rows"]["logs"], 2);
}

/// A restore of a backup taken before an erasure in one org erases that
/// org's rows again, and only those.
#[tokio::test(flavor = "multi_thread")]
async fn a_restore_re_applies_an_erasure_in_one_org() {
    let s = setup(false, "", "").await.unwrap();
    s.with_identity_file();
    let b = stdout_json(&run_ok(s.lethe().args(["run", "backup.create", "--json"])));
    let backup_id = b["result"]["id"].as_str().unwrap().to_string();
    let (code, v) = s.submit("erasure", "member@x.example", &["--org", "2"]);
    assert_eq!(code, Some(0), "{v}");
    process(&s);
    let target = s.c.path().join("restored.db");
    let r = stdout_json(&run_ok(
        s.lethe()
            .args(["backup", "restore", &backup_id, "--json", "--to"])
            .arg(format!("sqlite://{}", target.display())),
    ));
    assert_eq!(
        (
            r["erasures_reapplied"].as_i64(),
            r["org_erasures_reapplied"].as_i64()
        ),
        (Some(0), Some(1)),
        "{r}"
    );
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", target.display()))
        .await
        .unwrap();
    let q = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        q("SELECT count(*) FROM logs WHERE user_id = 2 AND org_id = 2").await,
        0
    );
    assert_eq!(
        q("SELECT count(*) FROM logs WHERE user_id = 2 AND org_id = 1").await,
        2
    );
    assert_eq!(
        q("SELECT count(*) FROM users WHERE email = 'member@x.example'").await,
        1,
        "the account was never erased"
    );

    // Rows the subject made in org 2 after the erasure are not the erased
    // ones: a backup taken since keeps them through a restore.
    let app = sqlx::SqlitePool::connect(&s.app_url).await.unwrap();
    sqlx::query(
        "INSERT INTO logs (org_id, user_id, path, created_at) VALUES (2, 2, '/new', '2026-02-01')",
    )
    .execute(&app)
    .await
    .unwrap();
    let b = stdout_json(&run_ok(s.lethe().args(["run", "backup.create", "--json"])));
    let later = s.c.path().join("restored-later.db");
    let r = stdout_json(&run_ok(
        s.lethe()
            .args([
                "backup",
                "restore",
                b["result"]["id"].as_str().unwrap(),
                "--json",
                "--to",
            ])
            .arg(format!("sqlite://{}", later.display())),
    ));
    assert_eq!(r["org_erasures_reapplied"], 0, "{r}");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", later.display()))
        .await
        .unwrap();
    let kept: i64 =
        sqlx::query_scalar("SELECT count(*) FROM logs WHERE user_id = 2 AND org_id = 2")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(kept, 1);
}
