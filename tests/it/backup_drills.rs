//! Restore drills at production size: a drill killed by its timeout leaves
//! no pg_restore and no scratch database behind; a drill whose process died
//! leaves one that the next drill sweeps, while a drill in progress elsewhere
//! keeps its own; the scratch server must be named or explicitly allowed.

use std::path::Path;
use std::time::{Duration, Instant};

use super::backup::{pg_s3_setup, Setup};
use crate::common::{run_ok, stdout_json};
use serde_json::Value;

/// A pg_bin folder whose pg_restore, when `LETHE_TEST_SLOW_RESTORE` names a
/// file, writes its pid there and hangs without reading (a restore stuck on
/// a huge table); otherwise the real one, after `LETHE_TEST_RESTORE_DELAY`
/// seconds if set (a slow restore).
fn slow_pg_bin() -> tempfile::TempDir {
    let bin = tempfile::tempdir().unwrap();
    let real = super::backup_counts::real_pg_bin();
    std::os::unix::fs::symlink(real.join("pg_dump"), bin.path().join("pg_dump")).unwrap();
    let script = bin.path().join("pg_restore");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$@\" >> \"$(dirname \"$0\")/args.log\"\nif [ -n \"$LETHE_TEST_SLOW_RESTORE\" ]; then echo $$ > \"$LETHE_TEST_SLOW_RESTORE\"; exec sleep 300; fi\n\
             if [ -n \"$LETHE_TEST_RESTORE_DELAY\" ]; then sleep \"$LETHE_TEST_RESTORE_DELAY\"; fi\nexec '{}' \"$@\"\n",
            real.join("pg_restore").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    bin
}

/// The scratch databases of drills whose claims live in `url`'s database
/// (other tests' drills on the same server have other names).
async fn scratch_databases(url: &str) -> Vec<String> {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    sqlx::query_scalar("SELECT datname FROM pg_database WHERE starts_with(datname, $1) ORDER BY 1")
        .bind(lethe::backup::scratch::prefix(
            url.rsplit('/').next().unwrap(),
        ))
        .fetch_all(&pool)
        .await
        .unwrap()
}

fn alive(pid: &str) -> bool {
    Path::new(&format!("/proc/{}", pid.trim())).exists()
}

/// Waits for the slow pg_restore to write its pid (`log`: its run's stderr).
fn pid_in(file: &Path, log: &Path) -> String {
    let start = Instant::now();
    loop {
        if let Ok(p) = std::fs::read_to_string(file) {
            if !p.trim().is_empty() {
                return p;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "pg_restore never started: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn verify_job(s: &Setup, timeout: &str) {
    s.c.job(
        "backup.verify",
        &format!(
            "kind = \"backup.verify\"\nschedule = \"0 0 3 * * *\"\nmax_attempts = 1\ntimeout = \"{timeout}\"\n"
        ),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drill_stopped_by_its_timeout_leaves_no_process_and_no_scratch_database() {
    let bin = slow_pg_bin();
    let extra = format!("pg_bin = \"{}\"", bin.path().display());
    let Some((s, _, _)) = pg_s3_setup(true, &extra).await else {
        return;
    };
    assert_eq!(s.run("backup.create", &[])["status"], "succeeded");
    verify_job(&s, "15s");
    let pid_file = bin.path().join("restore.pid");
    let started = Instant::now();
    let mut cmd = s.lethe();
    cmd.env("LETHE_TEST_SLOW_RESTORE", &pid_file);
    let v = crate::common::run_job(cmd, "backup.verify", &[]);
    assert_eq!(v["status"], "dead", "{v}");
    assert!(
        v["error"].as_str().unwrap_or("").contains("timed out"),
        "{v}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the drill was not stopped"
    );
    let pid = pid_in(&pid_file, &pid_file);
    assert!(!alive(&pid), "pg_restore ({}) outlived its run", pid.trim());
    assert_eq!(scratch_databases(&s.app_url).await, Vec::<String>::new());
}

/// A drill whose process is killed outright (no clean-up can run) leaves its
/// scratch database; the next drill drops it first, and no drill drops the
/// scratch database of a drill still running in another process.
#[tokio::test(flavor = "multi_thread")]
async fn the_next_drill_sweeps_what_a_killed_one_left_but_not_a_running_one() {
    let bin = slow_pg_bin();
    let extra = format!("pg_bin = \"{}\"", bin.path().display());
    let Some((s, _, _)) = pg_s3_setup(true, &extra).await else {
        return;
    };
    let created = s.run("backup.create", &[]);
    let id = created["result"]["id"].as_str().unwrap().to_string();
    // `backup verify ID`: drills outside the queue, so two can run at once.
    let hung = |name: &str| {
        let pid_file = bin.path().join(name);
        let mut cmd = s.lethe();
        cmd.env("LETHE_TEST_SLOW_RESTORE", &pid_file)
            .args(["backup", "verify", &id, "--json"])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(bin.path().join(format!("{name}.err"))).unwrap());
        let child = crate::common::Reaped(cmd.spawn().unwrap());
        let restore_pid = pid_in(&pid_file, &bin.path().join(format!("{name}.err")));
        (child, restore_pid)
    };
    // Killed outright: its scratch database stays, unclaimed.
    let (mut killed, orphan) = hung("killed.pid");
    let _ = killed.kill();
    let _ = std::process::Command::new("kill")
        .args(["-9", orphan.trim()])
        .status();
    let left = scratch_databases(&s.app_url).await;
    assert_eq!(left.len(), 1, "{left:?}");
    // The next drill sweeps it first, then hangs with its own, claimed.
    let (running, running_restore) = hung("running.pid");
    let now = scratch_databases(&s.app_url).await;
    assert_eq!(now.len(), 1, "{now:?}");
    assert!(!now.contains(&left[0]), "swept: {now:?}");
    // A third drill leaves the running one's scratch database alone.
    let out = s
        .lethe()
        .args(["backup", "verify", &id, "--json"])
        .output()
        .unwrap();
    let v = crate::common::stdout_json(&out);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["scratch_swept"], serde_json::json!([]), "{v}");
    assert_eq!(
        scratch_databases(&s.app_url).await,
        now,
        "the running drill keeps its own"
    );
    drop(running);
    let _ = std::process::Command::new("kill")
        .args(["-9", running_restore.trim()])
        .status();
    // Killed too: the next drill leaves nothing on the shared server.
    let out = s
        .lethe()
        .args(["backup", "verify", &id, "--json"])
        .output()
        .unwrap();
    assert_eq!(
        crate::common::stdout_json(&out)["scratch_swept"],
        serde_json::json!(now)
    );
    assert_eq!(scratch_databases(&s.app_url).await, Vec::<String>::new());
}

/// Without `scratch_url`, a drill on the application's own server is refused
/// unless allowed, and `lethe check` says where drills run.
#[tokio::test(flavor = "multi_thread")]
async fn a_drill_on_the_application_server_must_be_allowed() {
    let Some((s, _, _)) = pg_s3_setup(true, "").await else {
        return;
    };
    assert_eq!(s.run("backup.create", &[])["status"], "succeeded");
    let cfg = std::fs::read_to_string(s.c.config()).unwrap();
    let allowed = "allow_scratch_on_app_server = true\n";
    assert!(cfg.contains(allowed));
    let check = |s: &Setup| {
        let out = s.lethe().args(["check", "--json"]).output().unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "restore drills")
            .cloned()
            .unwrap_or_default()
    };
    let c = check(&s);
    assert_eq!(c["status"], "warn", "{c}");
    assert!(
        c["detail"]
            .as_str()
            .unwrap()
            .contains("application's own server"),
        "{c}"
    );
    std::fs::write(s.c.config(), cfg.replace(allowed, "")).unwrap();
    let v = s.run("backup.verify", &[]);
    assert_eq!(v["status"], "dead", "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("backup.scratch_url"),
        "{v}"
    );
    assert_eq!(check(&s)["status"], "error");
    // The same cluster under another name is the application's server still.
    let server = s.app_url.replace("127.0.0.1", "localhost");
    let named = cfg.replace(allowed, &format!("scratch_url = \"{server}\"\n"));
    std::fs::write(s.c.config(), named).unwrap();
    let v = s.run("backup.verify", &[]);
    assert_eq!(v["status"], "dead", "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("application's own"),
        "{v}"
    );
}

fn rto_alerts(s: &Setup) -> usize {
    run_ok(s.lethe().args(["run", "mail.flush"]));
    std::fs::read_dir(s.c.path().join("mail"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
                .filter(|m| m.contains("over the RTO"))
                .count()
        })
        .unwrap_or(0)
}

/// A drill slower than `backup.rto` mails ops once per breach (not once per
/// drill), shows in `backup list` and in `backup.rpo_check`'s report; a drill
/// within it ends the breach, and the next miss alerts again. An RTO of 8 s
/// against a 9 s delay: far from a 13 MB restore's ~1 s, even under load.
#[tokio::test(flavor = "multi_thread")]
async fn a_drill_slower_than_the_rto_mails_ops_once() {
    let bin = slow_pg_bin();
    let extra = format!("pg_bin = \"{}\"\nrto = \"8s\"", bin.path().display());
    let Some((s, _, _)) = pg_s3_setup(true, &extra).await else {
        return;
    };
    let slow_drill = || {
        assert_eq!(s.run("backup.create", &[])["status"], "succeeded");
        let mut cmd = s.lethe();
        cmd.env("LETHE_TEST_RESTORE_DELAY", "9");
        let v = crate::common::run_job(cmd, "backup.verify", &[]);
        assert_eq!(v["status"], "succeeded", "{v}");
        assert_eq!(
            (
                v["result"]["ok"].as_bool(),
                v["result"]["rto_met"].as_bool()
            ),
            (Some(true), Some(false)),
            "{v}"
        );
        assert_eq!(v["result"]["rto_ms"], 8000, "{v}");
    };
    slow_drill();
    slow_drill();
    assert_eq!(rto_alerts(&s), 1, "one alert for one breach");
    let listed = stdout_json(&run_ok(s.lethe().args(["backup", "list", "--json"])));
    let met: Vec<&Value> = listed["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| &b["rto_met"])
        .collect();
    assert_eq!(met, [&Value::from(false), &Value::from(false)], "{listed}");
    let text = String::from_utf8(run_ok(s.lethe().args(["backup", "list"])).stdout).unwrap();
    assert!(text.contains("OVER the RTO"), "{text}");
    let check = s.run("backup.rpo_check", &[]);
    assert_eq!(check["result"]["rto_ok"], false, "{check}");

    // Within a generous RTO the breach ends; the next slow drill alerts again.
    let cfg = std::fs::read_to_string(s.c.config()).unwrap();
    std::fs::write(s.c.config(), cfg.replace("rto = \"8s\"", "rto = \"1h\"")).unwrap();
    assert_eq!(s.run("backup.create", &[])["status"], "succeeded");
    let v = s.run("backup.verify", &[]);
    assert_eq!(v["result"]["rto_met"], true, "{v}");
    std::fs::write(s.c.config(), cfg).unwrap();
    slow_drill();
    assert_eq!(rto_alerts(&s), 2, "a new breach, a new alert");
}

/// `verify_jobs = 2`: the dump is spooled to a temporary file and restored
/// with `pg_restore --jobs=2`; the drill passes and the file is gone after.
#[tokio::test(flavor = "multi_thread")]
async fn a_parallel_drill_restores_from_a_spooled_file_it_removes() {
    let bin = slow_pg_bin();
    let extra = format!("verify_jobs = 2\npg_bin = \"{}\"", bin.path().display());
    let Some((s, _, _)) = pg_s3_setup(true, &extra).await else {
        return;
    };
    assert_eq!(s.run("backup.create", &[])["status"], "succeeded");
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = s.lethe();
    cmd.env("TMPDIR", tmp.path());
    let v = crate::common::run_job(cmd, "backup.verify", &[]);
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(v["result"]["ok"], true, "{v}");
    assert!(v["result"]["tables"].as_u64().unwrap() >= 2, "{v}");
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "the spooled dump is removed: {left:?}");
    let args = std::fs::read_to_string(bin.path().join("args.log")).unwrap();
    let spooled = format!("--jobs=2 {}/lethe-restore-", tmp.path().display());
    assert!(
        args.contains(&spooled),
        "pg_restore ran in parallel from the spool: {args}"
    );
    assert_eq!(scratch_databases(&s.app_url).await, Vec::<String>::new());
}
