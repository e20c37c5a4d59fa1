//! Evidence that survives its own database owner (issue 15): `audit.anchor`
//! writes the chain's head to an anchor store (a folder for SQLite, a moto S3
//! bucket with Object Lock for PostgreSQL), and `audit verify --live` catches
//! every rewrite of the store's history — an edited event, a deleted event with
//! every later hash recomputed under the real rule (triggers dropped or
//! disabled, then restored), a cut tail, an older copy of the store replayed —
//! naming the first bad sequence number.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::common::{app_exec, app_strings, run_ok, server_env, stdout_json, ConfigDir};

pub(crate) const KEY: &str = "anchor-test-signing-key-0123456789abcdef";

pub(crate) struct Rig {
    pub(crate) c: ConfigDir,
    store: String,
}

impl Rig {
    pub(crate) fn sqlite() -> Rig {
        Rig::sqlite_with("")
    }

    /// Folder anchors, and `extra` TOML (a data map) appended to the config.
    pub(crate) fn sqlite_with(extra: &str) -> Rig {
        let extra = format!("{extra}\n[audit]\nanchor_url = \"file://anchors\"\n");
        let c = ConfigDir::full(None, None, "", "", &extra);
        let store = format!("sqlite://{}", c.path().join("lethe.db").display());
        let rig = Rig { c, store }.with_job();
        run_ok(rig.cmd().arg("migrate"));
        rig
    }

    /// PostgreSQL store, anchors in a moto bucket created with Object Lock.
    pub(crate) async fn postgres() -> Option<Rig> {
        let moto = server_env("LETHE_TEST_MOTO_URL")?;
        let store = crate::common::fresh_pg_db().await?;
        let bucket = format!("anchors-{}", uuid::Uuid::new_v4().simple());
        crate::common::s3_client(&moto)
            .create_bucket()
            .bucket(&bucket)
            .object_lock_enabled_for_bucket(true)
            .send()
            .await
            .unwrap();
        let extra = format!(
            "[audit]\nanchor_url = \"s3://{bucket}/anchors\"\nanchor_endpoint = \"{moto}\"\nanchor_path_style = true\nanchor_retention = \"1d\"\n"
        );
        let rig = Rig {
            c: ConfigDir::full(Some(&store), None, "", "", &extra),
            store,
        }
        .with_job();
        run_ok(rig.cmd().arg("migrate"));
        Some(rig)
    }

    /// The job `lethe run audit.anchor` runs.
    fn with_job(self) -> Rig {
        self.c.job(
            "audit.anchor",
            "kind = \"audit.anchor\"\nschedule = \"0 */15 * * * *\"\n",
        );
        self
    }

    pub(crate) fn cmd(&self) -> Command {
        let mut c = self.c.lethe_aws();
        c.env("AUDIT_SIGNING_KEY", KEY);
        c
    }

    pub(crate) fn event(&self, org: u32) {
        let org = org.to_string();
        run_ok(
            self.cmd()
                .args(["hold", "add", "--org", &org, "--reason", "test"]),
        );
    }

    /// Runs `audit.anchor`; the anchored sequence number.
    pub(crate) fn anchor(&self) -> i64 {
        let v = crate::common::run_job(self.cmd(), "audit.anchor", &[]);
        assert_eq!(v["status"], "succeeded", "{v}");
        assert!(!v.to_string().contains(KEY), "no key in the output");
        v["result"]["seq"].as_i64().expect("anchored seq")
    }

    /// Three anchors over nine events: holds 1–3, anchor, holds 4–5,
    /// anchor, hold 6, anchor. Returns the anchored sequence numbers.
    pub(crate) fn build(&self) -> Vec<i64> {
        let mut anchored = Vec::new();
        for batch in [1..=3, 4..=5, 6..=6] {
            for org in batch {
                self.event(org);
            }
            anchored.push(self.anchor());
        }
        anchored
    }

    pub(crate) fn verify(&self, mut cmd: Command, args: &[&str]) -> (i32, Value) {
        let out = cmd.args(["audit", "verify"]).args(args).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!text.contains(KEY), "the key never reaches output: {text}");
        let v = if args.contains(&"--json") {
            stdout_json(&out)
        } else {
            Value::String(text)
        };
        (out.status.code().unwrap_or(-1), v)
    }

    pub(crate) fn live(&self) -> (i32, Value) {
        self.verify(self.cmd(), &["--live", "--json"])
    }

    pub(crate) fn export(&self, name: &str) -> PathBuf {
        let p = self.c.path().join(name);
        run_ok(
            self.cmd()
                .args(["audit", "export", "--signed", "--out"])
                .arg(&p),
        );
        p
    }

    /// `sql` with the append-only triggers out of the way, then restored:
    /// what a database owner can do.
    async fn without_triggers(&self, sql: &str) {
        if self.store.starts_with("postgres") {
            app_exec(&self.store, &format!(
                "SET search_path = lethe; ALTER TABLE audit_events DISABLE TRIGGER USER; {sql}; ALTER TABLE audit_events ENABLE TRIGGER USER;"
            ))
            .await;
            return;
        }
        let q = "FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit_events'";
        let names = app_strings(&self.store, &format!("SELECT name {q}")).await;
        let defs = app_strings(&self.store, &format!("SELECT sql {q}")).await;
        assert!(!names.is_empty(), "the store has append-only triggers");
        let drop: String = names.iter().map(|n| format!("DROP TRIGGER {n};")).collect();
        let restore: String = defs.iter().map(|d| format!("{d};")).collect();
        app_exec(&self.store, &format!("{drop} {sql}; {restore}")).await;
    }

    /// Deletes event `seq`, renumbers the later ones and recomputes every hash
    /// from there with the chain's real rule: internally consistent again.
    pub(crate) async fn delete_and_recompute(&self, seq: i64) {
        self.without_triggers(&format!(
            "DELETE FROM audit_events WHERE seq = {seq}; \
             UPDATE audit_events SET seq = -(seq - 1) WHERE seq > {seq}; \
             UPDATE audit_events SET seq = -seq WHERE seq < 0"
        ))
        .await;
        let s = lethe::store::connect(&self.store, 1).await.unwrap();
        let events = s.audit_page(0, 10_000).await.unwrap();
        drop(s);
        let mut prev = lethe::chain::genesis_hash();
        let mut sql = String::new();
        for e in &events {
            let rule = lethe::chain::HashRule::from_number(e.rule).unwrap();
            let fields = lethe::chain::EventFields {
                seq: e.seq,
                at: e.at,
                actor: &e.actor,
                action: &e.action,
                target: &e.target,
                details_canonical: &e.details,
            };
            let hash = lethe::chain::event_hash_under(rule, &prev, &fields);
            sql += &format!(
                "UPDATE audit_events SET prev_hash = '{prev}', hash = '{hash}' WHERE seq = {};",
                e.seq
            );
            prev = hash;
        }
        self.without_triggers(sql.trim_end_matches(';')).await;
    }
}

fn finding(v: &Value) -> (i64, String) {
    (
        v["first_bad_seq"].as_i64().unwrap_or(-1),
        v["finding"]["problem"].as_str().unwrap_or("").to_string(),
    )
}

fn assert_intact(rig: &Rig, anchors: u64) {
    let (code, v) = rig.live();
    assert_eq!((code, &v["verdict"]), (0, &"anchored".into()), "{v}");
    assert_eq!(v["anchors"]["matched"], anchors, "{v}");
}

async fn an_edited_event_is_named(rig: Rig) {
    let anchored = rig.build();
    assert_intact(&rig, 3);
    rig.without_triggers(
        "UPDATE audit_events SET details = '{\"org\":\"9\",\"reason\":\"test\"}' WHERE seq = 2",
    )
    .await;
    let (code, v) = rig.live();
    assert_eq!((code, &v["verdict"]), (1, &"broken".into()), "{v}");
    assert_eq!(finding(&v).0, 2, "{v}");
    assert!(finding(&v).1.contains("altered"), "{v}");
    assert!(anchored[0] > 2);
}

async fn a_deleted_event_with_recomputed_hashes_is_caught_by_the_anchors(rig: Rig) {
    let anchored = rig.build();
    let old = rig.export("old.jsonl");
    rig.delete_and_recompute(2).await;
    // What the issue found: the rewritten chain verifies on its own, signed.
    let rewritten = rig.export("rewritten.jsonl");
    let (code, v) = rig.verify(rig.cmd(), &[rewritten.to_str().unwrap(), "--json"]);
    assert_eq!((code, &v["verdict"]), (0, &"signed".into()), "{v}");
    // The anchors do not: the first anchor at or after seq 2 disagrees.
    let (code, v) = rig.live();
    assert_eq!((code, &v["verdict"]), (1, &"broken".into()), "{v}");
    assert_eq!(finding(&v).0, anchored[0], "{v}");
    assert!(v["finding"]["anchor_time"].is_string(), "{v}");
    // Nor does the export against the anchors, nor against the older export.
    let file = rewritten.to_str().unwrap();
    let (code, v) = rig.verify(rig.cmd(), &[file, "--anchors", "--json"]);
    assert_eq!((code, finding(&v).0), (1, anchored[0]), "{v}");
    let (code, v) = rig.verify(
        rig.cmd(),
        &[file, "--extends", old.to_str().unwrap(), "--json"],
    );
    assert_eq!((code, &v["extends"]), (1, &false.into()), "{v}");
}

async fn a_cut_tail_is_caught(rig: Rig) {
    let anchored = rig.build();
    let keep = anchored[1] - 1;
    rig.without_triggers(&format!("DELETE FROM audit_events WHERE seq > {keep}"))
        .await;
    let (code, v) = rig.live();
    assert_eq!((code, &v["verdict"]), (1, &"broken".into()), "{v}");
    assert_eq!(finding(&v).0, keep + 1, "{v}");
    assert!(finding(&v).1.contains("beyond the chain's end"), "{v}");
}

/// An older copy of the store put back as the live store, then used on.
async fn a_replayed_older_store_is_caught(rig: Rig) {
    rig.event(1);
    let first = rig.anchor();
    let copy = if rig.store.starts_with("postgres") {
        let (base, name) = rig.store.rsplit_once('/').unwrap();
        let old = format!("{name}_old");
        let admin = server_env("LETHE_TEST_PG_URL").unwrap();
        app_exec(&admin, &format!("CREATE DATABASE {old} TEMPLATE {name}")).await;
        format!("{base}/{old}")
    } else {
        let copy = rig.c.path().join("old.db");
        std::fs::copy(rig.c.path().join("lethe.db"), &copy).unwrap();
        // A write-ahead log left by the last process holds the newest events.
        let wal = rig.c.path().join("lethe.db-wal");
        if wal.exists() {
            std::fs::copy(&wal, rig.c.path().join("old.db-wal")).unwrap();
        }
        format!("sqlite://{}", copy.display())
    };
    let later = rig.build();
    // The replay: the old copy becomes the store, and work goes on in it.
    let replayed = || {
        let mut c = rig.cmd();
        c.env("LETHE_STORE_URL", &copy);
        c
    };
    for org in 7..=9 {
        let org = org.to_string();
        run_ok(replayed().args(["hold", "add", "--org", &org, "--reason", "r"]));
    }
    let (code, v) = rig.verify(replayed(), &["--live", "--json"]);
    assert_eq!((code, &v["verdict"]), (1, &"broken".into()), "{v}");
    assert_eq!(
        v["anchors"]["matched"], 1,
        "only the anchor before the copy matches: {v}"
    );
    assert!(first < later[0]);
    assert_eq!(finding(&v).0, later[0], "{v}");
}

mod sqlite {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_edited_event_is_named() {
        super::an_edited_event_is_named(Rig::sqlite()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deleted_event_with_recomputed_hashes_is_caught_by_the_anchors() {
        super::a_deleted_event_with_recomputed_hashes_is_caught_by_the_anchors(Rig::sqlite()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cut_tail_is_caught() {
        super::a_cut_tail_is_caught(Rig::sqlite()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replayed_older_store_is_caught() {
        super::a_replayed_older_store_is_caught(Rig::sqlite()).await;
    }
}

mod postgres {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_edited_event_is_named() {
        if let Some(rig) = Rig::postgres().await {
            super::an_edited_event_is_named(rig).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deleted_event_with_recomputed_hashes_is_caught_by_the_anchors() {
        if let Some(rig) = Rig::postgres().await {
            super::a_deleted_event_with_recomputed_hashes_is_caught_by_the_anchors(rig).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cut_tail_is_caught() {
        if let Some(rig) = Rig::postgres().await {
            super::a_cut_tail_is_caught(rig).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replayed_older_store_is_caught() {
        if let Some(rig) = Rig::postgres().await {
            super::a_replayed_older_store_is_caught(rig).await;
        }
    }

    /// The anchors are under Object Lock COMPLIANCE: moto refuses to delete them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn anchors_are_written_under_object_lock() {
        let Some(rig) = Rig::postgres().await else {
            return;
        };
        rig.event(1);
        let seq = rig.anchor();
        let toml = std::fs::read_to_string(rig.c.config()).unwrap();
        let bucket = toml
            .split("s3://")
            .nth(1)
            .unwrap()
            .split('/')
            .next()
            .unwrap();
        let s3 = crate::common::s3_client(&server_env("LETHE_TEST_MOTO_URL").unwrap());
        let key = format!("anchors/{seq:020}.json");
        let head = s3
            .head_object()
            .bucket(bucket)
            .key(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(
            head.object_lock_mode().map(|m| m.as_str()),
            Some("COMPLIANCE")
        );
        let until = head.object_lock_retain_until_date().unwrap().secs();
        let in_a_day = chrono::Utc::now().timestamp() + 86_400;
        assert!((until - in_a_day).abs() < 600, "retention 1d: {until}");
        let version = head.version_id().unwrap().to_string();
        let deleted = s3
            .delete_object()
            .bucket(bucket)
            .key(&key)
            .version_id(version)
            .send()
            .await;
        assert!(deleted.is_err(), "a locked anchor cannot be deleted");
    }
}

/// Without the key the verdict says the anchors were not authenticated;
/// --require-signature then exits 2; a malformed anchor object is named.
#[test]
fn verdicts_without_a_key_and_a_malformed_anchor() {
    let rig = Rig::sqlite();
    rig.event(1);
    rig.anchor();
    let (code, v) = rig.verify(rig.c.lethe(), &["--live", "--json"]);
    assert_eq!((code, &v["verdict"]), (0, &"unchecked".into()), "{v}");
    assert_eq!(v["anchors"]["signatures"], "unchecked", "{v}");
    let (code, _) = rig.verify(rig.c.lethe(), &["--live", "--require-signature"]);
    assert_eq!(code, 2);
    let (code, text) = rig.verify(rig.c.lethe(), &["--live"]);
    assert_eq!(code, 0);
    assert!(
        text.as_str()
            .unwrap()
            .starts_with("INTACT, ANCHORS NOT AUTHENTICATED"),
        "{text}"
    );

    let forged = rig.c.path().join("anchors").join(format!("{:020}.json", 1));
    std::fs::write(&forged, b"{\"seq\": 1}").unwrap();
    let (code, v) = rig.verify(rig.cmd(), &["--live", "--json"]);
    assert_eq!(code, 1, "{v}");
    let problem = finding(&v).1;
    assert!(
        problem.contains(&format!("{:020}.json", 1)) && problem.contains("not a Lethe anchor"),
        "{problem}"
    );
}

/// An unreachable anchor store fails the job (it stays queued for retry)
/// naming the store; everything else goes on.
#[test]
fn an_anchor_store_that_is_down_fails_only_the_anchor_job() {
    let port = crate::common::free_port();
    let extra = format!(
        "[audit]\nanchor_url = \"s3://anchors/x\"\nanchor_endpoint = \"http://127.0.0.1:{port}\"\nanchor_path_style = true\n"
    );
    let c = ConfigDir::full(None, None, "", "", &extra);
    let rig = Rig {
        store: format!("sqlite://{}", c.path().join("lethe.db").display()),
        c,
    }
    .with_job();
    run_ok(rig.cmd().arg("migrate"));
    rig.event(1);
    let v = crate::common::run_job(rig.cmd(), "audit.anchor", &[]);
    assert_eq!(v["status"], "failed", "{v}");
    let err = v.to_string();
    assert!(
        err.contains("anchors/x") || err.contains("127.0.0.1"),
        "{v}"
    );
    assert!(!err.contains(KEY));
    rig.event(2); // evidence still goes on
}

/// Bad anchor config: exit 2 naming the key, the file and line.
#[test]
fn an_unknown_anchor_store_scheme_is_refused_at_load() {
    let c = ConfigDir::full(None, None, "", "", "[audit]\nanchor_url = \"ftp://x/y\"\n");
    let out = c.lethe().arg("check").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("audit.anchor_url `ftp://x/y` must be s3://") && err.contains("lethe.toml:"),
        "{err}"
    );
}

/// `lethe check`: an anchor gap above twice the schedule is reported.
#[test]
fn check_reports_a_gap_between_anchors() {
    let rig = Rig::sqlite();
    rig.event(1);
    let first = rig.anchor();
    rig.event(2);
    rig.anchor();
    let check = |rig: &Rig| {
        let out = rig.cmd().args(["check", "--json"]).output().unwrap();
        let v = stdout_json(&out);
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "audit anchors")
            .cloned()
            .unwrap()
    };
    assert_eq!(check(&rig)["status"], "ok", "{}", check(&rig));
    let old = rig
        .c
        .path()
        .join("anchors")
        .join(format!("{first:020}.json"));
    // The anchor is read-only (0400): its owner can still make it writable.
    let mut perms = std::fs::metadata(&old).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
    std::fs::set_permissions(&old, perms).unwrap();
    let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(two_hours_ago)
        .unwrap();
    let c = check(&rig);
    assert_eq!(c["status"], "warn", "{c}");
    assert!(c["detail"].as_str().unwrap().contains("a gap of 2h"), "{c}");
}

/// `--extends`: a later export continues an earlier one.
#[test]
fn a_later_export_extends_an_earlier_one() {
    let rig = Rig::sqlite();
    rig.event(1);
    let old = rig.export("old.jsonl");
    rig.event(2);
    let new = rig.export("new.jsonl");
    let args = [new.to_str().unwrap(), "--extends", old.to_str().unwrap()];
    let (code, text) = rig.verify(rig.cmd(), &args);
    assert_eq!(code, 0, "{text}");
    assert!(text.as_str().unwrap().starts_with("EXTENDS"), "{text}");
    // Reversed, the older cannot extend the newer.
    let args = [old.to_str().unwrap(), "--extends", new.to_str().unwrap()];
    let (code, text) = rig.verify(rig.cmd(), &args);
    assert_eq!(code, 1, "{text}");
    assert!(text.as_str().unwrap().contains("fewer than"), "{text}");
}

/// The auditor's recipe: `tests/auditor/verify.py`, written from the
/// README's recipe alone (no Lethe code), verifies a real signed export and
/// its anchors, and rejects the export of a rewritten history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auditors_python_verifier_from_the_readme_checks_an_export_and_its_anchors() {
    let Some(python) = server_env("LETHE_TEST_PYTHON") else {
        return;
    };
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for quoted in [
        "lethe-anchor-v1",
        "85e1c1e4eb2dfbd464b40bc9ef7d80408bd7e9feca78dbe7fc81bf8f89c6105c",
        "a1b5d50d08e05202fd6421532bd6ae91140a088eae25357601805618fe98bcbe",
    ] {
        assert!(
            readme.contains(quoted),
            "the README's recipe gives {quoted}"
        );
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/auditor/verify.py");
    let rig = Rig::sqlite();
    let anchored = rig.build();
    let anchors = rig.c.path().join("anchors");
    let python_verify = |file: &PathBuf| {
        let out = Command::new(&python)
            .arg(script)
            .arg(file)
            .arg(&anchors)
            .arg(KEY)
            .output()
            .unwrap();
        (out.status.code(), stdout_json(&out))
    };
    let export = rig.export("audit.jsonl");
    let (code, v) = python_verify(&export);
    let (_, lethe) = rig.verify(rig.cmd(), &[export.to_str().unwrap(), "--json"]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["signature"], "valid", "{v}");
    assert_eq!(
        (&v["events"], &v["last_hash"]),
        (&lethe["events"], &lethe["last_hash"])
    );
    assert_eq!(v["anchors"]["matched"], 3, "{v}");
    // An anchor of events after the export counts as later, not as a mismatch.
    rig.event(9);
    rig.anchor();
    assert_eq!(python_verify(&export).1["anchors"]["later"], 1);

    rig.delete_and_recompute(2).await;
    let (code, v) = python_verify(&rig.export("rewritten.jsonl"));
    assert_eq!(code, Some(1), "{v}");
    let want = format!("seq {} does not hold what was anchored", anchored[0]);
    assert!(v["problem"].as_str().unwrap().starts_with(&want), "{v}");
}
