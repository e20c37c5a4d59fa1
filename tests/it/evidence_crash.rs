//! Evidence commits with the change: a `lethe` process killed after a store
//! method wrote its change and its audit event, but before the commit
//! (`LETHE_TEST_CRASH_BEFORE_COMMIT`, a `testing`-feature hook), leaves
//! neither; the same command run normally leaves both. SQLite and PostgreSQL.

use std::os::unix::process::ExitStatusExt;
use std::process::Command;

use crate::common::{run_ok, stdout_json, ConfigDir};

const CRASH: &str = "LETHE_TEST_CRASH_BEFORE_COMMIT";

/// Runs `cmd` with the crash hook on `method` and checks that it died by abort.
fn crashes_in(mut cmd: Command, method: &str) {
    let out = cmd.env(CRASH, method).output().expect("spawn lethe");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGABRT),
        "lethe should abort before committing {method}: {:?}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `(hold id, released?)` of every hold, and the audit actions, read from the store.
async fn state(url: &str) -> (Vec<(i64, bool)>, Vec<String>) {
    let s = lethe::store::connect(url, 2).await.unwrap();
    let holds = s.holds(true).await.unwrap();
    let events = s.audit_page(0, 1000).await.unwrap();
    (
        holds
            .iter()
            .map(|h| (h.id, h.released_at.is_some()))
            .collect(),
        events.into_iter().map(|e| e.action).collect(),
    )
}

async fn hold_add_and_release_commit_with_their_evidence(url: String) {
    let c = ConfigDir::new(Some(&url), "", "");
    run_ok(c.lethe().arg("migrate"));
    let (_, before) = state(&url).await;
    let add = [
        "hold",
        "add",
        "--org",
        "1",
        "--reason",
        "litigation",
        "--json",
    ];

    let mut cmd = c.lethe();
    cmd.args(add);
    crashes_in(cmd, "hold_add");
    assert_eq!(
        state(&url).await,
        (vec![], before.clone()),
        "a crash before the commit leaves neither the hold nor its event"
    );

    let hold = stdout_json(&run_ok(c.lethe().args(add)));
    let id = hold["id"].as_i64().expect("hold id");
    let (holds, events) = state(&url).await;
    assert_eq!(holds, vec![(id, false)]);
    assert_eq!(
        events[before.len()..],
        ["hold.added".to_string()],
        "both, once"
    );

    let release = ["hold", "release", &id.to_string(), "--reason", "settled"];
    let mut cmd = c.lethe();
    cmd.args(release);
    crashes_in(cmd, "hold_release");
    let (holds, after_crash) = state(&url).await;
    assert_eq!(holds, vec![(id, false)], "still active after the crash");
    assert_eq!(after_crash, events, "and no release event");

    run_ok(c.lethe().args(release));
    let (holds, events) = state(&url).await;
    assert_eq!(holds, vec![(id, true)]);
    assert_eq!(
        events[before.len()..],
        ["hold.added".to_string(), "hold.released".to_string()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_hold_changes_commit_with_their_evidence() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("lethe.db").display());
    hold_add_and_release_commit_with_their_evidence(url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_hold_changes_commit_with_their_evidence() {
    if let Some(url) = crate::common::fresh_pg_db().await {
        hold_add_and_release_commit_with_their_evidence(url).await;
    }
}
