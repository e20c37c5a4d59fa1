//! Rectification: `dsr submit --kind rectification --set TABLE.COLUMN=VALUE`
//! is checked against the data map and the schema at intake, applied by
//! `dsr.process` in one transaction (all of it or nothing), with evidence
//! that names columns and never a value, and applied again by a restore of
//! an older backup. The fixture is `dsr.rs`'s.

use crate::common::{run_ok, stdout_json};
use crate::dsr::setup;
use serde_json::Value;

macro_rules! both {
    ($($case:ident),* $(,)?) => {
        mod sqlite { $(#[tokio::test(flavor = "multi_thread")] async fn $case() { super::$case(false).await })* }
        mod postgres { $(#[tokio::test(flavor = "multi_thread")] async fn $case() { super::$case(true).await })* }
    };
}

both!(
    intake_refuses_what_the_data_map_keys_or_the_schema_lacks,
    corrections_apply_together_or_not_at_all_and_evidence_names_no_value
);

async fn intake_refuses_what_the_data_map_keys_or_the_schema_lacks(pg: bool) {
    let Some(s) = setup(pg, "", "").await else {
        return;
    };
    let refused = |kind: &str, set: &[&str]| {
        let mut cmd = s.lethe();
        cmd.args([
            "dsr",
            "submit",
            "--kind",
            kind,
            "--subject",
            "member@x.example",
        ]);
        for x in set {
            cmd.args(["--set", x]);
        }
        (cmd.output().unwrap().status.code(),)
    };
    // One `--set`: the exit code and what it said.
    let refused_why = |set: &str| {
        let out = s
            .lethe()
            .args([
                "dsr",
                "submit",
                "--kind",
                "rectification",
                "--subject",
                "member@x.example",
            ])
            .args(["--set", set])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for (set, why) in [
        (
            "users.email=new@x.example",
            "the email is how requests find",
        ),
        ("users.id=9", "names the subject"),
        ("logs.user_id=1", "names the subject"),
        ("logs.org_id=2", "names the org"),
        ("logs.created_at=2020-01-01", "retention counts from it"),
        ("memberships.role=owner", "ownership"),
        ("nowhere.name=x", "not in the data map"),
        ("users.nickname=x", "`rectifiable` columns"),
        ("users=x", "must name TABLE.COLUMN"),
    ] {
        let (code, err) = refused_why(set);
        assert_eq!(code, Some(2), "{set}: {err}");
        assert!(err.contains(why), "{set}: {err}");
    }
    assert_eq!(refused("rectification", &[]).0, Some(2), "nothing to set");
    assert_eq!(
        refused("export", &["users.name=x"]).0,
        Some(2),
        "--set on an export"
    );
    assert_eq!(
        refused("rectification", &["users.name=a", "users.name=b"]).0,
        Some(2),
        "one column set twice"
    );
    if pg {
        let (code, err) = refused_why("invoices.amount=a lot");
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("not a valid integer"), "{err}");
        // An explicit cast to varchar(12) would cut the value short without a word.
        s.app_exec("ALTER TABLE users ALTER COLUMN name TYPE varchar(12)")
            .await;
        let (code, err) = refused_why("users.name=Maximilian Member");
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("of at most 12 characters"), "{err}");
    }
    let list = stdout_json(&run_ok(s.lethe().args(["dsr", "list", "--json"])));
    assert_eq!(
        list["requests"].as_array().map(Vec::len),
        Some(0),
        "nothing recorded: {list}"
    );
}

async fn corrections_apply_together_or_not_at_all_and_evidence_names_no_value(pg: bool) {
    let Some(s) = setup(pg, "", "").await else {
        return;
    };
    let process = || stdout_json(&run_ok(s.lethe().args(["run", "dsr.process", "--json"])));
    let show = |id: &Value| {
        stdout_json(&run_ok(s.lethe().args([
            "dsr",
            "show",
            &id.to_string(),
            "--json",
        ])))
    };
    // The subject has three log rows: one value cannot say which it corrects,
    // so nothing is applied, the name included.
    let (code, v) = s.submit(
        "rectification",
        "member@x.example",
        &["--set", "users.name=Max Corrected", "--set", "logs.path=/z"],
    );
    assert_eq!(
        (code, v["state"].as_str()),
        (Some(0), Some("verified")),
        "{v}"
    );
    let run = process();
    assert_eq!(run["status"], "succeeded", "{run}");
    let shown = show(&v["id"]);
    assert_eq!(
        (shown["state"].as_str(), shown["reason"].as_str()),
        (Some("rejected"), Some("not_one_row")),
        "{shown}"
    );
    assert_eq!(
        s.scalar("SELECT name FROM users WHERE id = 2").await,
        "Max Member"
    );

    let (code, v) = s.submit(
        "rectification",
        "member@x.example",
        &[
            "--set",
            "users.name=Max Corrected",
            "--set",
            "invoices.amount=250",
        ],
    );
    assert_eq!(code, Some(0), "{v}");
    let run = process();
    assert_eq!(
        run["result"]["completed"],
        serde_json::json!([v["id"]]),
        "{run}"
    );
    assert_eq!(
        s.scalar("SELECT name FROM users WHERE id = 2").await,
        "Max Corrected"
    );
    assert_eq!(
        s.scalar("SELECT CAST(amount AS TEXT) FROM invoices WHERE user_id = 2")
            .await,
        "250"
    );
    assert_eq!(
        s.scalar("SELECT name FROM users WHERE id = 1").await,
        "Olive Owner",
        "no one else's row"
    );
    let shown = show(&v["id"]);
    assert_eq!(
        shown["result"]["columns"],
        serde_json::json!(["invoices.amount", "users.name"]),
        "{shown}"
    );
    assert_eq!(shown["result"]["rows"]["users"], 1, "{shown}");
    let audit = s.c.path().join("audit.jsonl");
    run_ok(s.lethe().args(["audit", "export", "--out"]).arg(&audit));
    let text = std::fs::read_to_string(&audit).unwrap();
    assert!(text.contains("dsr.rectified"), "evidence recorded");
    for value in ["Max Corrected", "Max Member", "\"250\"", "member@x.example"] {
        assert!(
            !text.contains(value),
            "the evidence names no value: {value}"
        );
    }

    // The application's own rule refuses a value: rejected, not retried, and
    // the rejection does not quote the value.
    s.app_exec(if pg {
        "ALTER TABLE users ADD CONSTRAINT no_forbidden CHECK (name <> 'Forbidden')"
    } else {
        "CREATE TRIGGER no_forbidden BEFORE UPDATE OF name ON users WHEN NEW.name = 'Forbidden'
         BEGIN SELECT RAISE(ABORT, 'no'); END;"
    })
    .await;
    let (code, v) = s.submit(
        "rectification",
        "member@x.example",
        &["--set", "users.name=Forbidden"],
    );
    assert_eq!(code, Some(0), "{v}");
    let run = process();
    assert_eq!(run["status"], "succeeded", "{run}");
    let shown = show(&v["id"]);
    assert_eq!(
        (shown["state"].as_str(), shown["reason"].as_str()),
        (Some("rejected"), Some("refused_by_database")),
        "{shown}"
    );
    assert!(!shown.to_string().contains("Forbidden"), "{shown}");
    assert_eq!(
        s.scalar("SELECT name FROM users WHERE id = 2").await,
        "Max Corrected"
    );
    if !pg {
        let store = sqlx::SqlitePool::connect(&format!(
            "sqlite://{}",
            s.c.path().join("lethe.db").display()
        ))
        .await
        .unwrap();
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM dsr_rectifications WHERE applied_at IS NULL")
                .fetch_one(&store)
                .await
                .unwrap();
        assert_eq!(pending, 0, "the values of rejected rectifications are gone");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restore_of_an_older_backup_applies_the_rectification_again_until_erasure() {
    let s = setup(false, "", "").await.unwrap();
    s.with_identity_file();
    let b = stdout_json(&run_ok(s.lethe().args(["run", "backup.create", "--json"])));
    let backup_id = b["result"]["id"].as_str().unwrap().to_string();
    let (code, v) = s.submit(
        "rectification",
        "member@x.example",
        &["--set", "users.name=Max Corrected"],
    );
    assert_eq!(code, Some(0), "{v}");
    run_ok(s.lethe().args(["run", "dsr.process"]));
    let restore = |name: &str| {
        let target = s.c.path().join(name);
        let r = stdout_json(&run_ok(
            s.lethe()
                .args(["backup", "restore", &backup_id, "--json", "--to"])
                .arg(format!("sqlite://{}", target.display())),
        ));
        (r, format!("sqlite://{}", target.display()))
    };
    let name_in = |url: String| async move {
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        sqlx::query_scalar::<_, String>("SELECT name FROM users WHERE id = 2")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let (r, url) = restore("restored.db");
    assert_eq!(r["rectifications_reapplied"], 1, "{r}");
    assert_eq!(
        name_in(url).await,
        "Max Corrected",
        "the correction survives the restore"
    );

    // Once the subject is erased, the correction's value goes from the ledger:
    // the next restore erases them again and keeps no trace of it.
    s.submit("erasure", "member@x.example", &[]);
    run_ok(s.lethe().args(["run", "dsr.process"]));
    let (r, url) = restore("restored-2.db");
    assert_eq!(
        (
            r["rectifications_reapplied"].as_u64(),
            r["erasures_reapplied"].as_u64()
        ),
        (Some(0), Some(1)),
        "{r}"
    );
    assert_eq!(name_in(url).await, "Deleted user");
    let store = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        s.c.path().join("lethe.db").display()
    ))
    .await
    .unwrap();
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM dsr_rectifications")
        .fetch_one(&store)
        .await
        .unwrap();
    assert_eq!(kept, 0, "no corrected value stays in Lethe's store");
}
