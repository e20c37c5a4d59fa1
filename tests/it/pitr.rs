//! Point-in-time recovery against a real cluster archiving through `lethe
//! wal push` (its first push killed mid-upload: PostgreSQL retries, and no
//! corrupt segment is ever restored): a physical base backup, rows written
//! before and after a noted moment, and a restore to that moment in a new
//! data directory holding exactly the rows committed before it, with an
//! erasure completed after it applied again; the base backup's drill; and
//! the refusals (a target before the base backup ended, a used folder).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::common::{run_ok, stdout_json, ConfigDir};
use crate::restore::{DATA_MAP, FIXTURE};
use crate::wal::{archiving_cluster, Cluster};

const KEY: &str = "test-pseudonym-key-0123456789";
const AWS: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_REGION", "us-east-1"),
];

struct Setup {
    c: ConfigDir,
    cluster: Cluster,
    root: tempfile::TempDir,
}

impl Setup {
    fn lethe(&self) -> Command {
        let mut cmd = self.c.lethe();
        cmd.env("LETHE_PSEUDONYM_KEY", KEY).envs(AWS);
        cmd
    }

    async fn exec(&self, sql: &str) {
        let pool = sqlx::PgPool::connect(&self.cluster.url()).await.unwrap();
        sqlx::raw_sql(sql).execute(&pool).await.unwrap();
        pool.close().await;
    }

    fn erase(&self, email: &str) {
        run_ok(
            self.lethe()
                .args(["dsr", "submit", "--kind", "erasure", "--subject", email]),
        );
        let v = stdout_json(&run_ok(self.lethe().args(["run", "dsr.process", "--json"])));
        assert_eq!(v["result"]["completed"].as_array().unwrap().len(), 1, "{v}");
    }

    /// Switches to a new WAL file and waits until the server archived it;
    /// returns the server's log. A new connection each time round: it wakes
    /// the postmaster, which restarts an archiver whose command was killed.
    async fn archive_now(&self) -> String {
        use sqlx::Connection;
        let url = self.cluster.url();
        let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
        let switched: String = sqlx::query_scalar("SELECT pg_walfile_name(pg_switch_wal())")
            .fetch_one(&mut c)
            .await
            .unwrap();
        c.close().await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
            let last: Option<String> =
                sqlx::query_scalar("SELECT last_archived_wal FROM pg_stat_archiver")
                    .fetch_one(&mut c)
                    .await
                    .unwrap();
            c.close().await.unwrap();
            let log =
                std::fs::read_to_string(self.cluster.data.join("server.log")).unwrap_or_default();
            if last.as_deref() >= Some(switched.as_str()) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "{switched} never archived: {log}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn restore(&self, args: &[&str], dir: &Path) -> Output {
        self.lethe()
            .args(["backup", "restore", "--json", "--to-dir"])
            .arg(dir)
            .args(args)
            .output()
            .unwrap()
    }
}

/// A cluster archiving into `store` (a folder, or moto's S3) whose first
/// push is killed mid-upload; the fixture's tables and an `events` table.
async fn setup(s3: bool) -> Option<Setup> {
    let bin = crate::common::server_env("LETHE_TEST_PG_BIN")?;
    let _ = bin;
    let root = tempfile::tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let store = if s3 {
        let moto = crate::common::server_env("LETHE_TEST_MOTO_URL")?;
        let s3c = crate::common::s3_client(&moto);
        let bucket = crate::common::versioned_bucket(&s3c, "pitr").await;
        format!("url = \"s3://{bucket}/lethe\"\nendpoint = \"{moto}\"\nregion = \"us-east-1\"\npath_style = true\n")
    } else {
        "url = \"file://store\"\n".to_string()
    };
    let port = crate::common::free_port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let id = age::x25519::Identity::generate();
    let as_root = !std::env::var("LETHE_TEST_PG_AS")
        .unwrap_or_default()
        .is_empty();
    let extra = format!(
        "[object_store]\n{store}[backup]\nrecipients = [\"{}\"]\nidentity_file = \"age.txt\"\nmode = \"physical\"\n\
         lethe_bin = \"{}\"\n{}{DATA_MAP}",
        id.to_public(),
        root.path().join("lethe").display(),
        if as_root { "server_user = \"postgres\"\n" } else { "" },
    );
    let c = ConfigDir::full(None, Some(&url), "", "", &extra);
    crate::wal::for_postgres(&c, &id);
    // The first push is killed after its bytes were sent, before the upload completed.
    let lethe = root.path().join("lethe");
    let flags = root.path().join("flags");
    std::fs::create_dir(&flags).unwrap();
    std::fs::set_permissions(&flags, std::fs::Permissions::from_mode(0o777)).unwrap();
    let wrapper = root.path().join("push.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif mkdir {crashed} 2>/dev/null; then export LETHE_TEST_CRASH_AT=wal_push_uploading; fi\n\
             exec {lethe} --config {config} wal push \"$1\"\n",
            crashed = flags.join("crashed").display(),
            lethe = lethe.display(),
            config = c.config().display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let archive = format!("{} %p", wrapper.display());
    let cluster = archiving_cluster(root.path(), port, &archive, &AWS)?;
    for kind in [
        "dsr.process",
        "backup.create",
        "backup.prune",
        "backup.rpo_check",
    ] {
        c.job(
            kind,
            &format!("kind = \"{kind}\"\nschedule = \"0 0 3 * * *\"\nmax_attempts = 1\n"),
        );
    }
    let s = Setup { c, cluster, root };
    s.exec(
        &(FIXTURE
            .replace("INTEGER PRIMARY KEY", "SERIAL PRIMARY KEY")
            .replace("created_at TEXT", "created_at DATE")
            + "CREATE TABLE events (id int PRIMARY KEY, note text);"),
    )
    .await;
    run_ok(s.lethe().arg("migrate"));
    Some(s)
}

async fn count(url: &str, q: &str) -> i64 {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let n = sqlx::query_scalar(q).fetch_one(&pool).await.unwrap();
    pool.close().await;
    n
}

/// Starts the restored data directory on a free port (never archiving) and
/// returns what it holds: events, and whether each fixture user kept their email.
async fn inspect_restored(s: &Setup, data: &Path) -> (i64, i64, Vec<String>) {
    let port = crate::common::free_port();
    let start = s
        .cluster
        .cmd("pg_ctl")
        .arg("-D")
        .arg(data)
        .arg("-l")
        .arg(data.join("restored.log"))
        .arg("-o")
        .arg(format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c archive_mode=off",
            data.display()
        ))
        .args(["-w", "-t", "60", "start"])
        .output()
        .unwrap();
    let log = std::fs::read_to_string(data.join("restored.log")).unwrap_or_default();
    let err = String::from_utf8_lossy(&start.stderr);
    assert!(start.status.success(), "{err}{log}");
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let events = count(&url, "SELECT count(*) FROM events").await;
    let max = count(&url, "SELECT coalesce(max(id), 0)::bigint FROM events").await;
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let emails: Vec<String> = sqlx::query_scalar("SELECT email FROM users ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    let stop = s
        .cluster
        .cmd("pg_ctl")
        .arg("-D")
        .arg(data)
        .args(["-m", "fast", "-w", "stop"])
        .output()
        .unwrap();
    assert!(stop.status.success());
    (events, max, emails)
}

async fn restores_to_a_moment(s3: bool) {
    let Some(s) = setup(s3).await else {
        return;
    };
    s.exec("INSERT INTO events SELECT g, 'before the base' FROM generate_series(1, 100) g;")
        .await;
    let log = s.archive_now().await;
    assert!(
        log.contains("archive command failed"),
        "the first push was killed, and PostgreSQL pushed again: {log}"
    );
    let made = stdout_json(&run_ok(s.lethe().args(["run", "backup.create", "--json"])));
    let id = made["result"]["id"].as_str().unwrap().to_string();
    assert!(
        made["result"]["object"]
            .as_str()
            .unwrap()
            .ends_with(".base.tar.zst.age"),
        "{made}"
    );
    s.exec("INSERT INTO events SELECT g, 'after the base' FROM generate_series(101, 200) g;")
        .await;
    s.erase("member@x.example");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let moment = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    s.exec("INSERT INTO events SELECT g, 'after the moment' FROM generate_series(201, 300) g;")
        .await;
    // After the moment: the restore must not bring this subject back.
    s.erase("late@x.example");
    s.archive_now().await;

    // The archive before the base backup's start goes; what it needs stays.
    let pruned = stdout_json(&run_ok(s.lethe().args(["run", "backup.prune", "--json"])));
    assert!(
        pruned["result"]["wal_files_removed"].as_u64().unwrap() >= 1,
        "{pruned}"
    );

    let to = s.root.path().join("restored");
    let at = moment.to_rfc3339();
    let out = s.restore(&["--to-time", &at], &to);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let r = stdout_json(&out);
    assert_eq!(r["id"], id.as_str(), "{r}");
    assert!(r["erasures_reapplied"].as_u64().unwrap() >= 1, "{r}");
    let auto = std::fs::read_to_string(to.join("postgresql.auto.conf")).unwrap();
    assert!(
        !auto.contains("lethe restore"),
        "Lethe's settings removed: {auto}"
    );
    assert!(!to.join("recovery.signal").exists(), "recovery ended");
    assert!(
        to.join("pg_wal/archive_status/00000002.history.ready")
            .exists(),
        "the new timeline's history waits to be archived"
    );
    assert!(!to.join(".lethe-restore").exists(), "the claim is released");
    let (events, max, emails) = inspect_restored(&s, &to).await;
    assert_eq!(
        (events, max),
        (200, 200),
        "exactly the rows committed before the moment"
    );
    assert_eq!(emails.len(), 5);
    assert!(
        emails.contains(&"owner@x.example".to_string()),
        "{emails:?}"
    );
    for gone in ["member@x.example", "late@x.example"] {
        assert!(
            !emails.contains(&gone.to_string()),
            "{gone} came back: {emails:?}"
        );
    }

    // The drill replays every archived segment into a server of its own,
    // after sweeping the folder of a drill whose process died (its lock free).
    let orphan = format!(
        "drill-orphan{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let orphan_dir = std::env::temp_dir().join("lethe-drills").join(&orphan);
    std::fs::create_dir_all(orphan_dir.join("data")).unwrap();
    std::fs::write(orphan_dir.join("lock"), "").unwrap();
    let v = stdout_json(&run_ok(s.lethe().args(["backup", "verify", &id, "--json"])));
    assert_eq!(v["ok"], true, "{v}");
    // Swept by this drill or by the other test's, run at the same time.
    assert!(v["scratch_swept"].is_array(), "{v}");
    assert!(!orphan_dir.exists(), "{orphan} swept");
    assert!(v["tables"].as_u64().unwrap() >= 6, "{v}");

    // The RPO is read from the archive: fresh just after a switch; once the
    // server has written past the newest archived file for longer than the
    // RPO, breached, and ops are mailed.
    let rpo = |limit: &str| {
        let out = s
            .lethe()
            .args(["run", "backup.rpo_check", "--json", "--param"])
            .arg(format!("rpo=\"{limit}\""))
            .output()
            .unwrap();
        stdout_json(&out)["result"].clone()
    };
    let fresh = rpo("1h");
    assert_eq!(fresh["rpo_ok"], true, "{fresh}");
    assert_eq!(fresh["wal"]["other_cluster"], false, "{fresh}");
    if !s3 {
        let m: serde_json::Value = serde_json::from_slice(
            &std::fs::read(s.c.path().join(format!("store/backups/{id}.manifest.json"))).unwrap(),
        )
        .unwrap();
        let p = &m["physical"];
        assert!(p["system_identifier"].is_string(), "{m}");
        assert!(
            p["start_wal"].as_str().unwrap().len() == 24 && p["timeline"] == 1,
            "{m}"
        );
    }
    assert!(fresh["wal"]["segment"].is_string(), "{fresh}");
    s.exec("INSERT INTO events VALUES (1000, 'not archived yet');")
        .await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let stale = rpo("1s");
    assert_eq!(stale["rpo_ok"], false, "{stale}");
    assert_eq!(stale["wal"]["wal_since"], true, "{stale}");
    assert_eq!(stale["alerted"], true, "{stale}");
    let report = stdout_json(&run_ok(s.lethe().args(["dsr", "report", "--json"])));
    assert_eq!(
        report["backups"]["measured_from"], "wal archive",
        "{report}"
    );
    assert!(
        report["backups"]["achieved_30d_s"].as_u64().unwrap() >= 2,
        "{report}"
    );

    // Refusals leave nothing: a used folder, a moment before the base backup ended.
    let used = s.restore(&[], &to);
    assert_eq!(used.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&used.stderr).contains("not empty"));
    let early = s.root.path().join("early");
    let before = (moment - chrono::Duration::hours(1)).to_rfc3339();
    let too_early = s.restore(&[&id, "--to-time", &before], &early);
    assert_eq!(too_early.status.code(), Some(2));
    assert!(!early.exists());
    let future = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    assert_eq!(
        s.restore(&["--to-time", &future], &early).status.code(),
        Some(2)
    );

    // A gap in a folder archive: a restore to its end fails instead of
    // stopping at the gap as if the WAL ended there.
    if !s3 {
        for round in 0..2 {
            s.exec(&format!(
                "INSERT INTO events VALUES ({}, 'later');",
                2000 + round
            ))
            .await;
            s.archive_now().await;
        }
        let dir = s.c.path().join("store/wal/00000001");
        let mut segs: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|n| n.strip_suffix(".zst.age").map(str::to_string))
            .filter(|n| n.len() == 24)
            .collect();
        segs.sort();
        assert!(segs.len() >= 4, "{segs:?}");
        let gone = &segs[segs.len() - 2];
        std::fs::remove_file(dir.join(format!("{gone}.zst.age"))).unwrap();
        std::fs::remove_file(dir.join(format!("{gone}.sha256"))).unwrap();
        let gap = s.root.path().join("gap");
        let out = s.restore(&[], &gap);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{err} {} {segs:?}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(err.contains("gap in the archive"), "{err}");
        assert!(!gap.exists(), "nothing left behind");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_folder_archive_restores_to_a_moment() {
    restores_to_a_moment(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_s3_archive_restores_to_a_moment() {
    restores_to_a_moment(true).await;
}
