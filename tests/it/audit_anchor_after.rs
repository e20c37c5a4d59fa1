//! `audit.anchor` right after a purge (issue 15 item 1: "at the end of every
//! DSR completion, purge and backup"): the purge's end queues one anchor run,
//! `lethe run` runs it at once, and the anchored head covers the purge's
//! evidence. A dry run changes nothing and queues nothing.

use serde_json::Value;

use crate::audit_anchors::Rig;
use crate::common::{app_exec, run_job, run_ok, stdout_json};

const DATA_MAP: &str = r#"
[[data_map]]
table = "events"
class = "events"
timestamp = "created_at"
retention = "30d"
"#;

/// The highest seq of an exported event with this action and target.
fn last_seq(export: &str, action: &str, target: &str) -> i64 {
    export
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["action"] == action && e["target"] == target)
        .filter_map(|e| e["seq"].as_i64())
        .max()
        .unwrap_or_else(|| panic!("no {action} event on {target}"))
}

/// A rig with a table of one expired and one young row, and a purge job.
async fn purge_rig() -> Rig {
    let rig = Rig::sqlite_with(DATA_MAP);
    let app = format!("sqlite://{}", rig.c.path().join("app.db").display());
    app_exec(
        &app,
        "CREATE TABLE events (id INTEGER PRIMARY KEY, created_at TEXT NOT NULL); \
         INSERT INTO events (created_at) VALUES (datetime('now', '-40 days')), (datetime('now', '-1 days'))",
    )
    .await;
    rig.c.job(
        "purge",
        "kind = \"retention.purge\"\nschedule = \"0 15 2 * * *\"\n",
    );
    rig
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_is_followed_by_an_anchor_covering_its_evidence() {
    let rig = purge_rig().await;

    let v = run_job(rig.cmd(), "purge", &["--dry-run"]);
    assert_eq!(v["status"], "succeeded", "{v}");
    assert!(
        v.get("follow_ups").is_none(),
        "a dry run anchors nothing: {v}"
    );

    let v = run_job(rig.cmd(), "purge", &[]);
    assert_eq!(v["status"], "succeeded", "{v}");
    let follow = v["follow_ups"].as_array().expect("follow_ups");
    assert_eq!(follow.len(), 1, "{v}");
    assert_eq!(
        (&follow[0]["kind"], &follow[0]["status"]),
        (&"audit.anchor".into(), &"succeeded".into()),
        "{v}"
    );
    let anchored = follow[0]["result"]["seq"].as_i64().expect("anchored seq");

    let out = run_ok(rig.cmd().args(["audit", "export"]));
    let export = String::from_utf8_lossy(&out.stdout);
    let purged = last_seq(&export, "retention.purged", "table:events");
    let ended = last_seq(&export, "job.succeeded", "job:purge");
    assert!(
        anchored >= ended && ended > purged,
        "the anchor (seq {anchored}) covers the purge's evidence (seq {purged}) and its end (seq {ended})"
    );
    let object = rig
        .c
        .path()
        .join("anchors")
        .join(format!("{anchored:020}.json"));
    assert!(object.exists(), "{}", object.display());

    let out = run_ok(
        rig.cmd()
            .args(["jobs", "history", "--job", "audit.anchor", "--json"]),
    );
    let history = stdout_json(&out);
    assert_eq!(history["runs"][0]["trigger"], "follow_up", "{history}");
    let (code, v) = rig.live();
    assert_eq!((code, &v["verdict"]), (0, &"anchored".into()), "{v}");
}

/// Under `lethe serve` (the deployment path): a purge queued with `--detach`
/// ends, its follow-up anchor is queued, and a worker takes and runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_serve_the_follow_up_anchor_is_taken_by_a_worker() {
    let rig = purge_rig().await;
    run_ok(rig.cmd().args(["run", "purge", "--detach"]));
    let log = rig.c.path().join("serve.log");
    let _serve = crate::common::spawn_serve(rig.cmd(), &log, &[]);
    let purge = crate::common::wait_run_end(|| rig.cmd(), "purge", 60);
    assert_eq!(purge["state"], "succeeded", "{purge}");
    let anchor = crate::common::wait_run_end(|| rig.cmd(), "audit.anchor", 60);
    assert_eq!(
        (&anchor["state"], &anchor["trigger"]),
        (&"succeeded".into(), &"follow_up".into()),
        "{anchor}"
    );
    let out = run_ok(rig.cmd().args(["audit", "export"]));
    let export = String::from_utf8_lossy(&out.stdout);
    let ended = last_seq(&export, "job.succeeded", "job:purge");
    let anchored = anchor["result"]["seq"].as_i64().expect("anchored seq");
    assert!(
        anchored >= ended,
        "anchor {anchored} covers the purge's end {ended}"
    );
}
