//! The CLI as a user runs it: exit codes, --json shapes, errors naming files.

use crate::common::{lethe, run_ok, stdout_json, ConfigDir};
use std::path::Path;

fn demo(dir: &Path) -> serde_json::Value {
    let out = run_ok(lethe().args(["demo", "--json", "--dir"]).arg(dir));
    stdout_json(&out)
}

#[test]
fn demo_runs_every_job_kind_once_and_all_succeed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let v = demo(&dir);
    let runs = v["runs"].as_array().expect("runs array");
    let kinds: Vec<&str> = runs.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    for k in lethe::jobs::registry().kinds() {
        assert!(kinds.contains(&k), "demo did not run {k}: {kinds:?}");
    }
    for r in runs {
        assert_eq!(r["status"], "succeeded", "{r}");
        for field in [
            "job",
            "kind",
            "attempts",
            "started_at",
            "finished_at",
            "result",
        ] {
            assert!(!r[field].is_null(), "run lacks {field}: {r}");
        }
    }
    assert_eq!(v["audit"]["verified"], true);
    assert_eq!(v["audit"]["signature"], "valid");
    // audit.anchor ran in the tour, and right after the backup and the DSR
    // run that completed requests (follow-ups; the tour's purge is a dry run,
    // which queues none): the store's chain matches every anchor.
    let follow_ups: Vec<&str> = runs
        .iter()
        .flat_map(|r| r["follow_ups"].as_array().into_iter().flatten())
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    assert!(
        follow_ups.iter().all(|k| *k == "audit.anchor"),
        "{follow_ups:?}"
    );
    for after in ["backup.create", "dsr.process"] {
        let run = runs.iter().find(|r| r["kind"] == after).unwrap();
        assert_eq!(run["follow_ups"][0]["status"], "succeeded", "{run}");
    }
    let purge = runs
        .iter()
        .find(|r| r["kind"] == "retention.purge")
        .unwrap();
    assert!(purge["follow_ups"].is_null(), "{purge}");
    assert_eq!(v["audit"]["live"]["intact"], true, "{}", v["audit"]);
    assert_eq!(
        v["audit"]["live"]["anchors_matched"],
        1 + follow_ups.len(),
        "{}",
        v["audit"]
    );
    // And an inclusion proof of the first erasure against the newest anchor.
    let proof = &v["audit"]["proof"];
    assert_eq!(proof["action"], "dsr.erased", "{proof}");
    assert!(proof["path"].as_u64().unwrap() >= 1, "{proof}");
    assert!(
        v["mail"]["messages"].as_u64().unwrap() >= 1,
        "mail.flush delivered the demo's mail"
    );
    assert_eq!(v["seeded"]["orgs"], 12);

    // The sample app has the promised shape: a sole owner and a plain member of one org.
    let owners = std::process::Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import sqlite3; c=sqlite3.connect('{}'); print(c.execute(\"select u.email, m.role, (select count(*) from memberships m2 where m2.org_id=m.org_id and m2.role='owner') from memberships m join users u on u.id=m.user_id where m.org_id=1 and u.email in ('owner@demo.example','member@demo.example') order by u.email\").fetchall())",
            dir.join("app.db").display()
        ))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&owners.stdout).trim(),
        "[('member@demo.example', 'member', 1), ('owner@demo.example', 'owner', 1)]"
    );

    // A second demo replaces the first (it is marked as a demo folder).
    demo(&dir);
}

/// The tour a person reads closes with what to try next, physical mode included.
#[test]
fn the_demo_tour_closes_with_hints_and_point_in_time_recovery() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run_ok(lethe().args(["demo", "--dir"]).arg(tmp.path().join("demo")));
    let text = String::from_utf8_lossy(&out.stdout);
    let hints = &text[text.find("Try, in").expect("hints")..];
    for hint in [
        "lethe backup verify ID",
        "backup.mode = \"physical\"",
        "lethe wal push %p",
        "--to-time",
    ] {
        assert!(hints.contains(hint), "{hint} missing from: {hints}");
    }
}

#[test]
fn demo_refuses_a_folder_that_is_not_a_demo() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("precious.txt"), "keep me").unwrap();
    let out = lethe()
        .args(["demo", "--dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(tmp.path().join("precious.txt").exists());
}

#[test]
fn run_runner_prune_in_demo_dir_reports_succeeded_and_dry_run_deletes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    demo(&dir);
    let out = run_ok(
        lethe()
            .current_dir(&dir)
            .args(["run", "runner.prune", "--json"]),
    );
    let v = stdout_json(&out);
    assert_eq!(v["status"], "succeeded");
    assert_eq!(v["kind"], "runner.prune");
    assert_eq!(v["attempts"], 1);

    // Everything is younger than 1ms * 0 → with keep=0s every finished run is prunable.
    let dry = stdout_json(&run_ok(lethe().current_dir(&dir).args([
        "run",
        "runner.prune",
        "--dry-run",
        "--param",
        "keep=\"0s\"",
        "--json",
    ])));
    assert_eq!(dry["dry_run"], true);
    assert!(
        dry["result"]["would_delete"].as_i64().unwrap() >= 3,
        "{dry}"
    );
    let hist = stdout_json(&run_ok(
        lethe()
            .current_dir(&dir)
            .args(["jobs", "history", "--json", "--limit", "100"]),
    ));
    let before = hist["runs"].as_array().unwrap().len();
    assert!(before >= 4);

    let real = stdout_json(&run_ok(lethe().current_dir(&dir).args([
        "run",
        "runner.prune",
        "--param",
        "keep=\"0s\"",
        "--json",
    ])));
    assert!(real["result"]["deleted"].as_i64().unwrap() >= 3, "{real}");
}

#[test]
fn broken_config_exits_2_naming_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("broken.toml");
    std::fs::write(
        &path,
        "[database]\nurl = \"sqlite://app.db\"\n[mail\nfrom = 1\n",
    )
    .unwrap();
    let out = lethe()
        .arg("--config")
        .arg(&path)
        .arg("check")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("broken.toml:3"),
        "stderr should name broken.toml line 3: {err}"
    );

    let json = lethe()
        .arg("--config")
        .arg(&path)
        .args(["check", "--json"])
        .output()
        .unwrap();
    assert_eq!(json.status.code(), Some(2));
    let v = stdout_json(&json);
    assert_eq!(v["ok"], false);
    assert!(v["checks"][0]["detail"]
        .as_str()
        .unwrap()
        .contains("broken.toml:3"));

    let missing = lethe()
        .arg("--config")
        .arg(tmp.path().join("nope.toml"))
        .arg("check")
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nope.toml"));
}

#[test]
fn bad_job_files_exit_2_naming_file_line_and_fix() {
    let cases = [
        (
            "kind = \"retention.bogus\"\nschedule = \"0 0 3 * * *\"\n",
            "bad.toml:1:8",
            "unknown job kind",
        ),
        (
            "kind = \"mail.flush\"\nschedule = \"0 3 * * *\"\n",
            "bad.toml:2:12",
            "six fields",
        ),
        (
            "kind = \"mail.flush\"\nschedule = \"0 0 3 * * *\"\ntimezone = \"Mars/Olympus\"\n",
            "bad.toml:3",
            "IANA",
        ),
        (
            "kind = \"mail.flush\"\nschedule = \"0 0 3 * * *\"\ntimeout = \"10 parsecs\"\n",
            "bad.toml:3",
            "timeout",
        ),
        (
            "kind = \"runner.prune\"\nschedule = \"0 0 3 * * *\"\n[params]\nkepe = \"30d\"\n",
            "bad.toml:3",
            "unknown field `kepe`",
        ),
        (
            "kind = \"mail.flush\"\nschedule = \"0 0 3 * * *\"\nretries = 3\n",
            "bad.toml:3",
            "unknown field `retries`",
        ),
    ];
    for (body, location, hint) in cases {
        let c = ConfigDir::new(None, "", "");
        c.job("bad", body);
        let out = c.lethe().arg("check").output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{body}: {err}");
        assert!(
            err.contains(location),
            "{body}: expected {location} in: {err}"
        );
        assert!(err.contains(hint), "{body}: expected `{hint}` in: {err}");
        // `run` validates the same way.
        let run = c.lethe().args(["run", "bad"]).output().unwrap();
        assert_eq!(run.status.code(), Some(2));
    }
}

#[test]
fn passwords_in_the_config_file_are_refused_and_never_echoed() {
    let c = ConfigDir::new(Some("postgres://lethe:hunter2@127.0.0.1:1/db"), "", "");
    let out = c.lethe().arg("check").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("LETHE_STORE_URL"), "{err}");
    assert!(!err.contains("hunter2"), "the password leaked: {err}");

    // From the environment it is accepted, and a connection failure does not echo it either.
    let ok = ConfigDir::new(None, "", "");
    let out = ok
        .lethe()
        .env("LETHE_STORE_URL", "postgres://lethe:hunter2@127.0.0.1:1/db")
        .args(["check", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains("hunter2"), "the password leaked: {all}");
    assert!(all.contains("REDACTED"));
}

#[test]
fn run_rejects_unknown_jobs_and_bad_params_with_exit_2() {
    let c = ConfigDir::new(None, "", "");
    c.job(
        "prune",
        "kind = \"runner.prune\"\nschedule = \"0 0 3 * * *\"\n",
    );
    run_ok(c.lethe().arg("migrate"));
    let out = c.lethe().args(["run", "nosuchjob"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("known jobs: prune"));
    let out = c
        .lethe()
        .args(["run", "prune", "--param", "nope=1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field `nope`"));
    let out = c
        .lethe()
        .args(["run", "prune", "--param", "keep"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn commands_refuse_an_unmigrated_store_with_a_hint() {
    let c = ConfigDir::new(None, "", "");
    c.job(
        "prune",
        "kind = \"runner.prune\"\nschedule = \"0 0 3 * * *\"\n",
    );
    let out = c.lethe().args(["jobs", "list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("lethe migrate"));
    let check = c.lethe().arg("check").output().unwrap();
    assert_eq!(
        check.status.code(),
        Some(1),
        "check reports the unmigrated store as a failure"
    );
    run_ok(c.lethe().arg("migrate"));
    run_ok(c.lethe().arg("check"));
    let list = stdout_json(&run_ok(c.lethe().args(["jobs", "list", "--json"])));
    assert_eq!(list["jobs"][0]["name"], "prune");
    assert!(list["jobs"][0]["next_fire"]
        .as_str()
        .unwrap()
        .ends_with("03:00:00Z"));
}

#[test]
fn audit_export_verify_detects_tampering_and_wrong_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    demo(&dir);
    run_ok(lethe().current_dir(&dir).args(["run", "runner.prune"]));
    let file = tmp.path().join("audit.jsonl");
    run_ok(
        lethe()
            .current_dir(&dir)
            .args(["audit", "export", "--signed", "--out"])
            .arg(&file),
    );
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 4);
    assert!(lines.last().unwrap().contains("\"signature\""));

    let ok = stdout_json(&run_ok(
        lethe()
            .current_dir(&dir)
            .args(["audit", "verify", "--json"])
            .arg(&file),
    ));
    assert_eq!(
        (ok["ok"].as_bool(), ok["signature"].as_str()),
        (Some(true), Some("valid"))
    );

    // Alter line 2's actor: verify exits 1 and names line 2.
    let mut altered: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
    altered[1] = altered[1].replacen("\"actor\":\"", "\"actor\":\"mallory-", 1);
    let bad = tmp.path().join("altered.jsonl");
    std::fs::write(&bad, altered.join("\n") + "\n").unwrap();
    let out = lethe()
        .current_dir(&dir)
        .args(["audit", "verify"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("line 2"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Drop line 2: the sequence breaks at (new) line 2.
    let mut dropped: Vec<&str> = lines.clone();
    dropped.remove(1);
    let gap = tmp.path().join("gap.jsonl");
    std::fs::write(&gap, dropped.join("\n") + "\n").unwrap();
    let v = stdout_json(
        &lethe()
            .current_dir(&dir)
            .args(["audit", "verify", "--json"])
            .arg(&gap)
            .output()
            .unwrap(),
    );
    assert_eq!(
        (v["ok"].as_bool(), v["broken_line"].as_u64()),
        (Some(false), Some(2))
    );

    // Truncating the tail is caught by the signature block's count.
    let mut cut: Vec<&str> = lines.clone();
    cut.remove(cut.len() - 2);
    let short = tmp.path().join("short.jsonl");
    std::fs::write(&short, cut.join("\n") + "\n").unwrap();
    let v = stdout_json(
        &lethe()
            .current_dir(&dir)
            .args(["audit", "verify", "--json"])
            .arg(&short)
            .output()
            .unwrap(),
    );
    assert_eq!(v["ok"], false);

    // A different key: the signature is invalid.
    let v = stdout_json(
        &lethe()
            .current_dir(tmp.path())
            .env("AUDIT_SIGNING_KEY", "not-the-key")
            .args(["audit", "verify", "--json"])
            .arg(&file)
            .output()
            .unwrap(),
    );
    assert_eq!(
        (v["ok"].as_bool(), v["signature"].as_str()),
        (Some(false), Some("invalid"))
    );

    // Unsigned export without a key configured: --signed refuses with exit 2.
    let c = ConfigDir::new(None, "", "");
    c.job(
        "prune",
        "kind = \"runner.prune\"\nschedule = \"0 0 3 * * *\"\n",
    );
    run_ok(c.lethe().arg("migrate"));
    let out = c
        .lethe()
        .args(["audit", "export", "--signed"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("AUDIT_SIGNING_KEY"));
}

#[test]
fn init_writes_a_working_starter_and_refuses_to_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    run_ok(lethe().args(["init", "--dir"]).arg(tmp.path()));
    assert!(tmp.path().join("lethe.toml").exists());
    assert!(tmp.path().join("jobs/mail.flush.toml").exists());
    let again = lethe()
        .args(["init", "--dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
    // The starter parses: migrate works on it (the app database is the operator's to create).
    std::fs::write(tmp.path().join("app.db"), b"").unwrap();
    run_ok(
        lethe()
            .arg("--config")
            .arg(tmp.path().join("lethe.toml"))
            .arg("migrate"),
    );
    run_ok(
        lethe()
            .arg("--config")
            .arg(tmp.path().join("lethe.toml"))
            .arg("check"),
    );
}

/// A retention purge of 600 rows in batches of 10, against a small SQLite app.
fn slow_purge_dir() -> ConfigDir {
    let map = "[[data_map]]\ntable = \"events\"\nclass = \"events\"\ntimestamp = \"created_at\"\nretention = \"90d\"\n";
    let c = ConfigDir::full(None, None, "", "", map);
    let app = c.path().join("app.db");
    let status = std::process::Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import sqlite3; c = sqlite3.connect({:?}); c.execute('CREATE TABLE events (id INTEGER PRIMARY KEY, created_at TEXT)'); \
             c.executemany('INSERT INTO events (created_at) VALUES (datetime(\"now\", ?))', [('-%d days' % (100 + i % 300),) for i in range(600)]); c.commit()",
            app.display().to_string()
        ))
        .status()
        .unwrap();
    assert!(status.success());
    c.job(
        "purge",
        "kind = \"retention.purge\"\nschedule = \"0 0 3 * * *\"\n[params]\nbatch_size = 10\npause_ms = 10\n",
    );
    run_ok(c.lethe().arg("migrate"));
    c
}

#[test]
fn long_runs_draw_a_progress_bar_on_a_terminal_and_plain_logs_otherwise() {
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIP: util-linux `script` (a pseudo-terminal) is not installed");
        return;
    }
    let c = slow_purge_dir();
    // Through `script`, stderr is a pseudo-terminal: the bar is drawn (and cleared at the end).
    let cmd = format!(
        "{} --config {} run purge",
        env!("CARGO_BIN_EXE_lethe"),
        c.config().display()
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let tty = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{tty}");
    assert!(
        tty.contains("purge events") && tty.contains("rows"),
        "a bar on the terminal: {tty}"
    );
    // Piped (a fresh copy of the data): no bar, only the result.
    let c2 = slow_purge_dir();
    let out = c2.lethe().args(["run", "purge"]).output().unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("purge events"), "no bar when piped: {err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("succeeded"));
}

#[test]
fn log_format_json_writes_one_json_object_per_line_without_secrets() {
    let c = slow_purge_dir();
    let secret = "s3cr3t-signing-key-never-logged";
    for (flag, env) in [(true, None), (false, Some("json"))] {
        let mut cmd = c.lethe();
        if flag {
            cmd.args(["--log-format", "json"]);
        }
        if let Some(v) = env {
            cmd.env("LETHE_LOG_FORMAT", v);
        }
        let out = cmd
            .args(["run", "purge", "--json"])
            .env("RUST_LOG", "info")
            .env("AUDIT_SIGNING_KEY", secret)
            .output()
            .unwrap();
        assert!(out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<serde_json::Value> = err
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        assert!(
            lines
                .iter()
                .any(|l| l["fields"]["message"] == "run started" && l["level"] == "INFO"),
            "the run's log lines are structured: {err}"
        );
        assert!(!err.contains(secret), "no secret in logs");
        stdout_json(&out);
    }
}

/// Files holding secrets or personal data are owner-only: the demo's secrets,
/// the application and store databases, the keyring, stored objects, mail,
/// and an audit export written with --out. And none of them still holds the
/// email of the subject the demo erased.
#[test]
fn files_with_secrets_or_personal_data_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    demo(&dir);
    let out = dir.join("audit.jsonl");
    run_ok(
        lethe()
            .arg("--config")
            .arg(dir.join("lethe.toml"))
            .args(["audit", "export", "--out"])
            .arg(&out),
    );
    let mut checked = 0;
    let mut stack = vec![dir.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            if p.is_dir() {
                assert_eq!(
                    mode & 0o077,
                    0,
                    "{} is open to others ({mode:o})",
                    p.display()
                );
                stack.push(p);
                continue;
            }
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            // The demo erases this subject: no byte of any file may still name them
            // (free pages, index pages, WAL, mail, exports, audit).
            let erased = lethe::demo::user_email(42);
            let bytes = std::fs::read(&p).unwrap();
            assert!(
                !bytes.windows(erased.len()).any(|w| w == erased.as_bytes()),
                "{} still holds the erased subject's email",
                p.display()
            );
            let private = d.ends_with("secrets")
                || d.ends_with("mail")
                || d.components().any(|c| c.as_os_str() == "objects")
                || name.contains(".db")
                || name.ends_with(".json")
                || name == "audit.jsonl";
            if d.ends_with("anchors") {
                // Anchors: owner-only and read-only (a folder can do no more).
                assert_eq!(mode, 0o400, "{} is {mode:o}", p.display());
                checked += 1;
            } else if private {
                assert_eq!(mode, 0o600, "{} is {mode:o}", p.display());
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 8,
        "only {checked} private files found under {}",
        dir.display()
    );
}

/// `serve --only JOB` schedules that job and no other; a name not in the
/// catalog is a usage error.
#[test]
fn serve_only_schedules_the_named_jobs() {
    let c = ConfigDir::new(None, "poll_interval = \"100ms\"", "");
    for name in ["wanted", "other"] {
        c.job(
            name,
            "kind = \"test.sleep\"\nschedule = \"* * * * * *\"\n[params]\nms = 1\n",
        );
    }
    run_ok(c.lethe().arg("migrate"));
    let bad = c
        .lethe()
        .args(["serve", "--only", "nope"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--only nope"));

    let mut serve = crate::common::spawn_serve(c.lethe(), &c.path().join("serve.log"), &["wanted"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let runs = |job: &str| {
        let h = stdout_json(&run_ok(
            c.lethe().args(["jobs", "history", "--json", "--job", job]),
        ));
        h["runs"].as_array().unwrap().len()
    };
    while runs("wanted") < 2 {
        assert!(std::time::Instant::now() < deadline, "wanted never ran");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    crate::common::signal(&serve, libc::SIGTERM);
    crate::common::wait_exit(&mut serve, 30);
    assert_eq!(runs("other"), 0, "a job not named was scheduled");
}

/// A SQLite config with a runner.prune job, migrated, with a few audit events.
fn audited_dir() -> ConfigDir {
    let c = ConfigDir::new(None, "", "");
    c.job(
        "prune",
        "kind = \"runner.prune\"\nschedule = \"0 0 3 * * *\"\n",
    );
    run_ok(c.lethe().arg("migrate"));
    run_ok(c.lethe().args(["run", "prune"]));
    run_ok(c.lethe().args(["run", "prune"]));
    c
}

fn verify(c: &ConfigDir, file: &Path, key: Option<&str>, extra: &[&str]) -> (Option<i32>, String) {
    let mut cmd = c.lethe();
    if let Some(k) = key {
        cmd.env("AUDIT_SIGNING_KEY", k);
    }
    let out = cmd
        .args(["audit", "verify"])
        .args(extra)
        .arg(file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[test]
fn audit_verify_tells_intact_unsigned_from_signed_and_never_says_ok_unchecked() {
    let c = audited_dir();
    let key = "audit-signing-key-for-verify";
    let plain = c.path().join("plain.jsonl");
    let signed = c.path().join("signed.jsonl");
    run_ok(c.lethe().args(["audit", "export", "--out"]).arg(&plain));
    run_ok(
        c.lethe()
            .env("AUDIT_SIGNING_KEY", key)
            .args(["audit", "export", "--signed", "--out"])
            .arg(&signed),
    );

    // Unsigned, key configured: intact but unsigned, exit 0 — not BROKEN, not OK.
    let (code, text) = verify(&c, &plain, Some(key), &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.starts_with("INTACT, UNSIGNED"), "{text}");
    assert!(!text.contains("BROKEN"), "{text}");
    let (_, json) = verify(&c, &plain, Some(key), &["--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        (&v["ok"], &v["intact"], &v["signature"], &v["verdict"]),
        (
            &true.into(),
            &true.into(),
            &"absent".into(),
            &"unsigned".into()
        ),
        "{v}"
    );
    // --require-signature makes it a failure.
    let (code, text) = verify(&c, &plain, Some(key), &["--require-signature"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("UNSIGNED"), "{text}");
    let (code, json) = verify(&c, &plain, Some(key), &["--require-signature", "--json"]);
    assert_eq!(code, Some(1));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&json).unwrap()["ok"],
        false
    );
    // ... and needs a key to check one (exit 2, naming where the key comes from).
    let (code, text) = verify(&c, &signed, None, &["--require-signature"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("AUDIT_SIGNING_KEY"), "{text}");

    // Without a key nothing is `OK` unqualified.
    for file in [&signed, &plain] {
        let (code, text) = verify(&c, file, None, &[]);
        assert_eq!(code, Some(0), "{text}");
        assert!(!text.starts_with("OK"), "{text}");
        assert!(
            text.contains("signature not checked (no key in $AUDIT_SIGNING_KEY)"),
            "{text}"
        );
    }
    let (_, json) = verify(&c, &signed, None, &["--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        (&v["signature"], &v["verdict"]),
        (&"unchecked".into(), &"unchecked".into())
    );

    // Signed, with the key: OK.
    let (code, text) = verify(&c, &signed, Some(key), &["--require-signature"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.starts_with("OK:") && text.contains("signature valid"),
        "{text}"
    );

    // Tampered: BROKEN at the altered line, with or without a signature.
    for file in [&plain, &signed] {
        let text = std::fs::read_to_string(file).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        lines[1] = lines[1].replacen("\"actor\":\"", "\"actor\":\"mallory-", 1);
        let bad = c.path().join("bad.jsonl");
        std::fs::write(&bad, lines.join("\n") + "\n").unwrap();
        let (code, out) = verify(&c, &bad, Some(key), &[]);
        assert_eq!(code, Some(1), "{out}");
        assert!(out.starts_with("BROKEN at line 2"), "{out}");
    }
}

/// Spawns `cmd` with its stdout a pipe whose reader is already gone.
fn run_with_closed_stdout(mut cmd: std::process::Command) -> std::process::Output {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    child.wait_with_output().unwrap()
}

#[test]
fn a_closed_stdout_ends_commands_quietly() {
    let c = audited_dir();
    let cases: Vec<(Vec<&str>, i32)> = vec![
        (vec!["jobs", "list", "--json"], 0),
        (vec!["jobs", "list"], 0),
        (vec!["jobs", "history", "--json"], 0),
        (vec!["run", "prune", "--json"], 0),
        (vec!["run", "prune"], 0),
        (vec!["audit", "export"], 0),
        (vec!["dsr", "list"], 0),
        (vec!["check"], 1),
    ];
    for (args, want) in cases {
        let mut cmd = c.lethe();
        cmd.args(&args);
        let out = run_with_closed_stdout(cmd);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(!err.contains("Broken pipe"), "{args:?}: {err}");
        // `check` fails here on its own account (no [app]); the others succeed.
        if want == 0 {
            assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        } else {
            assert_ne!(out.status.code(), Some(101), "{args:?}: {err}");
        }
    }
    // Any other write failure (a full disk) is not silent: exit 1, said on stderr.
    if let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") {
        let out = c
            .lethe()
            .args(["jobs", "list", "--json"])
            .stdout(full)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("error: writing to stdout"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // `audit export | head -c1` left no file behind and the chain is untouched.
    let file = c.path().join("after.jsonl");
    run_ok(c.lethe().args(["audit", "export", "--out"]).arg(&file));
    assert_eq!(verify(&c, &file, None, &[]).0, Some(0));
}

#[test]
fn numeric_arguments_are_range_checked_with_exit_2() {
    // A working config, so exit 2 can only come from the argument itself.
    let c = ConfigDir::new(None, "", "");
    run_ok(c.lethe().arg("migrate"));
    for (args, flag) in [
        (
            vec![
                "dsr",
                "extend",
                "1",
                "--days",
                "4294967295",
                "--reason",
                "x",
            ],
            "--days",
        ),
        (
            vec!["dsr", "extend", "1", "--days", "3651", "--reason", "x"],
            "--days",
        ),
        (
            vec!["dsr", "extend", "1", "--days", "0", "--reason", "x"],
            "--days",
        ),
        (
            vec!["dsr", "extend", "1", "--days=-1", "--reason", "x"],
            "--days",
        ),
        (vec!["dsr", "list", "--limit", "0"], "--limit"),
        (vec!["dsr", "list", "--limit", "4294967296"], "--limit"),
        (vec!["jobs", "history", "--limit", "10001"], "--limit"),
        (
            vec![
                "breach",
                "open",
                "--title",
                "t",
                "--detected-at",
                "2026-01-01T00:00:00Z",
                "--subjects=-5",
            ],
            "--subjects",
        ),
    ] {
        let out = c.lethe().args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(flag),
            "{args:?}: the error names {flag}: {err}"
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    let out = c
        .lethe()
        .args([
            "dsr",
            "extend",
            "1",
            "--days",
            "4294967295",
            "--reason",
            "x",
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("1..=3650"),
        "the error names the range: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// With a real request: the largest `--days` reaches the jurisdiction's limit
/// check (exit 2) instead of overflowing the deadline.
#[test]
fn dsr_extend_at_the_largest_days_is_refused_by_the_jurisdiction_not_a_panic() {
    let app = "[app]\nsubjects = { table = \"users\", id = \"id\", email = \"email\" }\n";
    let c = ConfigDir::full(None, None, "", "", app);
    let status = std::process::Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import sqlite3; c = sqlite3.connect({:?}); c.execute('CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT)'); \
             c.execute(\"INSERT INTO users VALUES (1, 'a@x.example')\"); c.commit()",
            c.path().join("app.db").display().to_string()
        ))
        .status()
        .unwrap();
    assert!(status.success());
    run_ok(c.lethe().arg("migrate"));
    let r = stdout_json(&run_ok(c.lethe().args([
        "dsr",
        "submit",
        "--kind",
        "export",
        "--subject",
        "a@x.example",
        "--jurisdiction",
        "gdpr",
        "--json",
    ])));
    let id = r["id"].to_string();
    // 3650 is a valid number the jurisdiction refuses (policy, exit 3);
    // 4294967295 is out of the argument's range (usage, exit 2).
    for (days, code) in [("3650", 3), ("4294967295", 2)] {
        let out = c
            .lethe()
            .args([
                "dsr",
                "extend",
                &id,
                "--days",
                days,
                "--reason",
                "complex request",
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "--days {days}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    run_ok(c.lethe().args([
        "dsr",
        "extend",
        &id,
        "--days",
        "30",
        "--reason",
        "complex request",
    ]));
}

/// Huge durations and counts in lethe.toml or a job file are refused at load
/// (exit 2, file:line:col, the allowed range) — they used to pass `check` and
/// panic in the job; values at the limit load and the jobs using them run.
#[test]
fn huge_durations_and_counts_are_refused_at_load_and_limits_run() {
    let cases = [
        (
            "[runner]\n",
            "lease = \"99999999999w\"",
            "runner.lease must be between 1s and 1w",
        ),
        (
            "[runner]\n",
            "poll_interval = \"0s\"",
            "runner.poll_interval must be between 10ms and 1h",
        ),
        (
            "[mail]\n",
            "max_attempts = 0",
            "mail.max_attempts must be between 1 and 1000",
        ),
        (
            "[mail]\n",
            "timezone = \"Europe/Berln\"",
            "mail.timezone: `Europe/Berln` is not an IANA zone name",
        ),
        (
            "[store]\n",
            "max_connections = 0",
            "store.max_connections must be between 1 and 1000",
        ),
        (
            "[database]\n",
            "max_connections = 100000",
            "database.max_connections must be between 1 and 1000",
        ),
        (
            "",
            "[keys]\ndek_rotation = \"99999999999w\"",
            "must be between 0s and 36500d",
        ),
        (
            "",
            "[keys]\nconcurrency = 100",
            "keys.concurrency must be between 1 and 64",
        ),
        (
            "",
            "[dsr]\nreport_period = \"99999999999w\"",
            "must be between 0s and 36500d",
        ),
        (
            "",
            "[dsr]\nexport_link_ttl = \"36501d\"",
            "must be between 1s and 36500d",
        ),
        (
            "",
            "[breach]\nreminders = [\"6h\", \"99999999999w\"]",
            "must be between 0s and 36500d",
        ),
        (
            "[http]\n",
            "queue_timeout = \"2m\"",
            "http.queue_timeout must be between 0s and 1m",
        ),
    ];
    for (section, line, want) in cases {
        let c = ConfigDir::new(None, "", "");
        let cfg = std::fs::read_to_string(c.config()).unwrap();
        let cfg = if section.is_empty() {
            format!("{cfg}\n{line}\n")
        } else {
            cfg.replacen(section, &format!("{section}{line}\n"), 1)
        };
        std::fs::write(c.config(), &cfg).unwrap();
        let line_no = cfg
            .lines()
            .position(|l| !l.is_empty() && line.ends_with(l) && !l.starts_with('['))
            .unwrap()
            + 1;
        let out = c.lethe().arg("check").output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{line}: {err}");
        assert!(
            err.contains(&format!("lethe.toml:{line_no}:")),
            "{line}: {err}"
        );
        assert!(err.contains(want), "{line}: {err}");
    }
    // A job file: the timeout and a duration param.
    for (body, want) in [
        (
            "timeout = \"99999999999w\"\n",
            "timeout must be between 1ms and 36500d",
        ),
        (
            "[params]\nkeep = \"99999999999w\"\n",
            "keep: `99999999999w` is too long",
        ),
    ] {
        let c = ConfigDir::new(None, "", "");
        c.job(
            "prune",
            &format!("kind = \"runner.prune\"\nschedule = \"0 0 3 * * *\"\n{body}"),
        );
        let out = c.lethe().arg("check").output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{body}: {err}");
        assert!(
            err.contains("prune.toml:") && err.contains(want),
            "{body}: {err}"
        );
    }

    // At the limits: loads, and the jobs that use these durations run.
    let c = ConfigDir::new(None, "lease = \"7d\"", "");
    let cfg = std::fs::read_to_string(c.config()).unwrap();
    std::fs::write(
        c.config(),
        format!("{cfg}\n[dsr]\nreport_period = \"36500d\"\nexport_link_ttl = \"36500d\"\n[breach]\nreminders = [\"36500d\"]\n"),
    )
    .unwrap();
    for kind in ["dsr.sla_report", "breach.tick", "runner.prune"] {
        c.job(
            kind,
            &format!("kind = \"{kind}\"\nschedule = \"0 0 3 * * *\"\ntimeout = \"36500d\"\n"),
        );
    }
    run_ok(c.lethe().arg("migrate"));
    run_ok(c.lethe().args([
        "breach",
        "open",
        "--title",
        "t",
        "--detected-at",
        "2026-01-01T00:00:00Z",
    ]));
    for kind in ["dsr.sla_report", "breach.tick", "runner.prune"] {
        let v = stdout_json(&run_ok(c.lethe().args(["run", kind, "--json"])));
        assert_eq!(v["status"], "succeeded", "{kind}: {v}");
    }
    run_ok(
        c.lethe()
            .args(["run", "runner.prune", "--param", "keep=\"36500d\""]),
    );
}
