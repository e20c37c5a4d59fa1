//! Continuous archiving: `lethe wal push` as a real PostgreSQL cluster's
//! `archive_command` (the cluster started here with `archive_mode = on`),
//! and `lethe wal fetch` restoring what it archived byte for byte; at the
//! edges, idempotent pushes, other bytes under an archived name refused, a
//! missing file (exit 1) told apart from a failure (exit 126, which stops
//! PostgreSQL's recovery instead of ending it early).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{run_ok, stdout_json, ConfigDir};

/// A config with a folder store and a backup key, readable (as the
/// `postgres` user runs `archive_command`) and its store writable by anyone.
fn wal_config() -> (ConfigDir, age::x25519::Identity) {
    let id = age::x25519::Identity::generate();
    let c = ConfigDir::full(
        None,
        None,
        "",
        "",
        &format!(
            "[object_store]\nurl = \"file://store\"\n[backup]\nrecipients = [\"{}\"]\nidentity_file = \"age.txt\"\n",
            id.to_public()
        ),
    );
    for_postgres(&c, &id);
    (c, id)
}

/// `c` readable by the `postgres` user (who runs `archive_command` and
/// `restore_command`): its identity in `age.txt`, its folder store writable.
pub fn for_postgres(c: &ConfigDir, id: &age::x25519::Identity) {
    use age::secrecy::ExposeSecret;
    std::fs::write(c.path().join("age.txt"), id.to_string().expose_secret()).unwrap();
    std::fs::create_dir_all(c.path().join("store")).unwrap();
    for (p, mode) in [
        (c.path().to_path_buf(), 0o755),
        (c.path().join("store"), 0o777),
    ] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

fn archived(c: &ConfigDir, name: &str) -> PathBuf {
    c.path()
        .join("store/wal")
        .join(&name[..8])
        .join(format!("{name}.zst.age"))
}

#[test]
fn pushes_are_idempotent_and_fetch_tells_missing_from_broken() {
    let (c, _) = wal_config();
    let seg = c.path().join("000000010000000000000007");
    let body: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    std::fs::write(&seg, &body).unwrap();
    let push = |p: &Path| {
        c.lethe()
            .args(["wal", "push", "--json"])
            .arg(p)
            .output()
            .unwrap()
    };
    let first = stdout_json(&run_ok(c.lethe().args(["wal", "push", "--json"]).arg(&seg)));
    assert_eq!(first["already_archived"], false, "{first}");
    assert!(archived(&c, "000000010000000000000007").exists());
    let again = push(&seg);
    assert_eq!(stdout_json(&again)["already_archived"], true);

    // Other bytes under an archived name: refused, the archive untouched.
    std::fs::write(&seg, b"not the same segment").unwrap();
    let other = push(&seg);
    let err = String::from_utf8_lossy(&other.stderr);
    assert_eq!(other.status.code(), Some(3), "{err}");
    assert!(
        err.contains("archived already with other contents"),
        "{err}"
    );
    // A segment whose sum never arrived (a push killed between the two) is not
    // archived: a fetch finds nothing, and the next push of that name goes through.
    let seg9 = c.path().join("000000010000000000000009");
    std::fs::write(&seg9, b"first try").unwrap();
    assert_eq!(push(&seg9).status.code(), Some(0));
    std::fs::remove_file(
        c.path()
            .join("store/wal/00000001/000000010000000000000009.sha256"),
    )
    .unwrap();
    let probe = c
        .lethe()
        .args(["wal", "fetch", "000000010000000000000009"])
        .arg(c.path().join("probe"))
        .output()
        .unwrap();
    assert_eq!(probe.status.code(), Some(1), "not archived");
    std::fs::write(&seg9, b"second try").unwrap();
    let retried = push(&seg9);
    assert_eq!(
        retried.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&retried.stderr)
    );
    assert_eq!(stdout_json(&retried)["already_archived"], false);

    let out = c.path().join("restored");
    let fetch = |name: &str| {
        c.lethe()
            .args(["wal", "fetch", name])
            .arg(&out)
            .output()
            .unwrap()
    };
    assert_eq!(fetch("000000010000000000000007").status.code(), Some(0));
    assert_eq!(
        std::fs::read(&out).unwrap(),
        body,
        "the first bytes, exactly"
    );
    assert_eq!(
        fetch("000000010000000000000008").status.code(),
        Some(1),
        "missing"
    );
    assert_eq!(
        fetch("00000002.history").status.code(),
        Some(1),
        "missing history"
    );
    assert_eq!(
        fetch("../etc/passwd").status.code(),
        Some(126),
        "not a WAL name"
    );
    // A folder with no archive in it (a typo, an unmounted disk): recovery
    // stops, it does not read "no more WAL".
    let cfg = std::fs::read_to_string(c.config()).unwrap();
    let elsewhere = c.path().join("elsewhere.toml");
    std::fs::write(&elsewhere, cfg.replace("file://store", "file://empty")).unwrap();
    let stops = |config: &Path, name: &str| {
        let out = crate::common::lethe()
            .arg("--config")
            .arg(config)
            .args(["wal", "fetch", name])
            .arg(c.path().join("x"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(126), "{err}");
    };
    stops(&elsewhere, "000000010000000000000008");
    // Arguments PostgreSQL never sends still stop recovery (clap's 2 would not).
    let out = c
        .lethe()
        .args(["wal", "fetch", "--bogus"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(126));
    // A config that does not load stops recovery too (exit 2 would end it).
    let broken = c.path().join("broken.toml");
    std::fs::write(&broken, "[database]\nurl = 42\n").unwrap();
    stops(&broken, "000000010000000000000007");

    // A tampered sum, or the wrong key: recovery must stop, not end early.
    let sum = c
        .path()
        .join("store/wal/00000001/000000010000000000000007.sha256");
    std::fs::write(&sum, "00").unwrap();
    let tampered = fetch("000000010000000000000007");
    assert_eq!(tampered.status.code(), Some(126));
    assert!(String::from_utf8_lossy(&tampered.stderr).contains("other bytes than were archived"));
    std::fs::write(
        &sum,
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&body)),
    )
    .unwrap();
    std::fs::write(
        c.path().join("age.txt"),
        age::secrecy::ExposeSecret::expose_secret(&age::x25519::Identity::generate().to_string()),
    )
    .unwrap();
    assert_eq!(
        fetch("000000010000000000000007").status.code(),
        Some(126),
        "wrong key"
    );
}

/// A cluster of this test's own, stopped (immediately) when dropped.
pub struct Cluster {
    pub data: PathBuf,
    bin: PathBuf,
    pub as_pg: Vec<String>,
    pub port: u16,
}

impl Cluster {
    pub fn cmd(&self, program: &str) -> Command {
        let exe = self.bin.join(program);
        match self.as_pg.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(exe);
                c
            }
            None => Command::new(exe),
        }
    }
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .cmd("pg_ctl")
            .args(["-D"])
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

/// The copy of the binary the `postgres` user runs, and the config it reads.
pub fn push_command(c: &ConfigDir, root: &Path) -> String {
    format!(
        "{} --config {} wal push %p",
        root.join("lethe").display(),
        c.config().display()
    )
}

/// Starts a cluster on `port` whose `archive_command` is `archive` (with
/// `env` in the server's environment); a copy of the binary in `root`.
pub fn archiving_cluster(
    root: &Path,
    port: u16,
    archive: &str,
    env: &[(&str, &str)],
) -> Option<Cluster> {
    let bin = PathBuf::from(crate::common::server_env("LETHE_TEST_PG_BIN")?);
    let as_pg: Vec<String> = std::env::var("LETHE_TEST_PG_AS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    // The postgres user runs archive_command: a copy of the binary it can reach.
    let lethe = root.join("lethe");
    std::fs::copy(env!("CARGO_BIN_EXE_lethe"), &lethe).unwrap();
    std::fs::set_permissions(&lethe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = root.join("pgdata");
    std::fs::create_dir_all(&data).unwrap();
    let cluster = Cluster {
        data: data.clone(),
        bin,
        as_pg,
        port,
    };
    if !cluster.as_pg.is_empty() {
        let owner = Command::new("chown")
            .arg("postgres")
            .arg(&data)
            .status()
            .unwrap();
        assert!(owner.success());
    }
    let init = cluster
        .cmd("initdb")
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"])
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let conf = format!(
        "\nlisten_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\nwal_level = replica\n\
         archive_mode = on\narchive_command = '{archive}'\nfsync = off\n",
        cluster.port,
        data.display(),
    );
    let conf_file = data.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf_file).unwrap();
    text.push_str(&conf);
    std::fs::write(&conf_file, text).unwrap();
    let start = cluster
        .cmd("pg_ctl")
        .arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(data.join("server.log"))
        .args(["-w", "-t", "30", "start"])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        start.status.success(),
        "{}",
        String::from_utf8_lossy(&start.stderr)
    );
    Some(cluster)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_archives_through_wal_push_and_fetch_restores_each_segment() {
    let root = tempfile::tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (c, _) = wal_config();
    let push = push_command(&c, root.path());
    let Some(cluster) = archiving_cluster(root.path(), crate::common::free_port(), &push, &[])
    else {
        return;
    };
    let pool = sqlx::PgPool::connect(&cluster.url()).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE t (id serial PRIMARY KEY, body text);
         INSERT INTO t (body) SELECT repeat('x', 200) FROM generate_series(1, 20000);",
    )
    .execute(&pool)
    .await
    .unwrap();
    let switched: String = sqlx::query_scalar("SELECT pg_walfile_name(pg_switch_wal())")
        .fetch_one(&pool)
        .await
        .unwrap();
    // PostgreSQL archives asynchronously: wait until the switched segment is in.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (archived_count, failed): (i64, i64) = loop {
        let (n, failed, last): (i64, i64, Option<String>) = sqlx::query_as(
            "SELECT archived_count, failed_count, last_archived_wal FROM pg_stat_archiver",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if last.as_deref() >= Some(switched.as_str()) || Instant::now() > deadline {
            break (n, failed);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = std::fs::read_to_string(cluster.data.join("server.log")).unwrap_or_default();
    assert!(
        archived_count >= 1 && failed == 0,
        "archived {archived_count}, failed {failed}: {log}"
    );
    assert!(archived(&c, &switched).exists(), "{switched} in the store");

    // Every archived segment comes back byte for byte as the cluster wrote it.
    let dir = c.path().join("store/wal/00000001");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".zst.age").map(str::to_string))
        .collect();
    names.sort();
    assert!(names.contains(&switched), "{names:?}");
    for name in &names {
        let out = root.path().join(format!("{name}.restored"));
        let fetched = c
            .lethe()
            .args(["wal", "fetch", name])
            .arg(&out)
            .output()
            .unwrap();
        assert_eq!(
            fetched.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&fetched.stderr)
        );
        let restored = std::fs::read(&out).unwrap();
        assert_eq!(restored.len(), 16 << 20, "{name}: a whole segment");
        let sum = std::fs::read_to_string(dir.join(format!("{name}.sha256"))).unwrap();
        assert_eq!(
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&restored)),
            sum.trim()
        );
        // Still in pg_wal (not recycled yet): the very bytes.
        if let Ok(original) = std::fs::read(cluster.data.join("pg_wal").join(name)) {
            assert!(original == restored, "{name} differs from pg_wal's");
        }
    }
    pool.close().await;

    // `lethe check` reads the server's own archiving: through wal push, with
    // archive_timeout off, a quiet server can hold WAL past backup.rpo.
    let cfg = std::fs::read_to_string(c.config()).unwrap().replace(
        "url = \"sqlite://app.db\"",
        &format!("url = \"{}\"", cluster.url()),
    );
    let check_cfg = c.path().join("check.toml");
    std::fs::write(&check_cfg, cfg).unwrap();
    let out = crate::common::lethe()
        .arg("--config")
        .arg(&check_cfg)
        .args(["check", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let wal = v["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "wal archiving"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(wal["status"], "warn", "{v}");
    assert!(
        wal["detail"]
            .as_str()
            .unwrap_or("")
            .contains("archive_timeout is off"),
        "{wal}"
    );
}
