//! Shared by the integration tests: the real servers `scripts/test` starts,
//! throwaway databases, and config folders.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sqlx::Connection;

pub mod fault_proxy;

/// The servers are required when `scripts/test` started them; a bare `cargo test`
/// without them skips server tests loudly instead of failing on setup.
pub fn server_env(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            assert!(
                std::env::var("LETHE_REQUIRE_SERVERS").as_deref() != Ok("1"),
                "{var} is not set but LETHE_REQUIRE_SERVERS=1: the test servers did not start"
            );
            eprintln!("SKIP: {var} not set; run scripts/test to start the test servers");
            None
        }
    }
}

/// A new empty PostgreSQL database on the test cluster; returns its URL.
pub async fn fresh_pg_db() -> Option<String> {
    let admin = server_env("LETHE_TEST_PG_URL")?;
    let name = format!("lethe_t_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("connect to test postgres");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let base = admin
        .rsplit_once('/')
        .map(|(b, _)| b.to_string())
        .expect("admin url has a database");
    Some(format!("{base}/{name}"))
}

pub fn lethe() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lethe"));
    c.env_remove("LETHE_CONFIG")
        .env_remove("LETHE_DATABASE_URL")
        .env_remove("LETHE_STORE_URL")
        .env_remove("AUDIT_SIGNING_KEY")
        .env("RUST_LOG", "warn");
    c
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn lethe");
    assert!(
        out.status.success(),
        "lethe failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn stdout_json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// A config folder: lethe.toml + jobs/, with an (empty) app database.
pub struct ConfigDir {
    pub dir: tempfile::TempDir,
}

impl ConfigDir {
    /// `store_url`: None → SQLite file in the folder. `runner`: extra lines for [runner].
    pub fn new(store_url: Option<&str>, runner: &str, mail: &str) -> ConfigDir {
        Self::full(store_url, None, runner, mail, "")
    }

    /// `database_url`: None → an empty SQLite app.db in the folder. `extra`: appended TOML ([app], [[data_map]]).
    pub fn full(
        store_url: Option<&str>,
        database_url: Option<&str>,
        runner: &str,
        mail: &str,
        extra: &str,
    ) -> ConfigDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store_url.map_or_else(|| "sqlite://lethe.db".to_string(), str::to_string);
        std::fs::create_dir_all(dir.path().join("jobs")).unwrap();
        // The app database must exist: Lethe never creates it.
        let app = dir.path().join("app.db");
        std::fs::write(&app, b"").unwrap();
        let mail = if mail.is_empty() {
            "transport = \"file\"\ndir = \"mail\"".to_string()
        } else {
            mail.to_string()
        };
        let database = database_url.unwrap_or("sqlite://app.db");
        // Restore drills on the test's own PostgreSQL server: allowed explicitly,
        // as a deployment without a separate scratch server must.
        let extra = if database.starts_with("postgres") && !extra.contains("scratch") {
            extra.replacen(
                "[backup]\n",
                "[backup]\nallow_scratch_on_app_server = true\n",
                1,
            )
        } else {
            extra.to_string()
        };
        // Most tests open their exports with the backup key: one key for both,
        // as `dsr.export_to_backup_keys` allows. Tests that give exports a key
        // of their own (dsr_delivery) set `export_recipients`.
        let extra = if extra.contains("[backup]")
            && !extra.contains("export_recipients")
            && !extra.contains("export_to_backup_keys")
        {
            if extra.contains("[dsr]\n") {
                extra.replacen("[dsr]\n", "[dsr]\nexport_to_backup_keys = true\n", 1)
            } else {
                format!("{extra}\n[dsr]\nexport_to_backup_keys = true\n")
            }
        } else {
            extra
        };
        let toml = format!(
            r#"[database]
url = "{database}"

[store]
url = "{store}"

[runner]
{runner}

[http]
listen = "127.0.0.1:0"

[mail]
from = "Lethe <lethe@test.example>"
{mail}

[mail.recipients]
dpo = ["dpo@test.example"]
ops = ["ops@test.example"]
{extra}
"#
        );
        std::fs::write(dir.path().join("lethe.toml"), toml).unwrap();
        ConfigDir { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("lethe.toml")
    }

    pub fn job(&self, name: &str, body: &str) -> &Self {
        std::fs::write(
            self.dir.path().join("jobs").join(format!("{name}.toml")),
            body,
        )
        .unwrap();
        self
    }

    /// `lethe()` with the fake AWS credentials moto accepts (S3 and KMS tests).
    pub fn lethe_aws(&self) -> Command {
        let mut cmd = self.lethe();
        cmd.env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1");
        cmd
    }

    pub fn lethe(&self) -> Command {
        let mut c = lethe();
        c.arg("--config").arg(self.config());
        c
    }

    pub fn load(&self) -> lethe::config::Config {
        lethe::jobs::load_config(&self.config()).expect("test config loads")
    }
}

/// A minimal HTTP/1.1 GET over a raw socket: status code and body.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let code = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sends a signal to a child process.
pub fn signal(child: &std::process::Child, sig: i32) {
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
}

/// Waits for a child to exit, up to `secs`; returns its exit code.
pub fn wait_exit(child: &mut std::process::Child, secs: u64) -> Option<i32> {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < until {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("process {} did not exit within {secs}s", child.id());
}

/// Polls `lethe jobs history --job JOB` (through `lethe`, a configured command
/// factory) until its newest run has ended; returns that run.
pub fn wait_run_end(lethe: impl Fn() -> Command, job: &str, secs: u64) -> serde_json::Value {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let h = stdout_json(&run_ok(
            lethe().args(["jobs", "history", "--json", "--job", job]),
        ));
        let r = h["runs"][0].clone();
        if r["state"] == "succeeded" || r["state"] == "dead" {
            return r;
        }
        assert!(
            std::time::Instant::now() < until,
            "run of {job} did not end within {secs}s: {r}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// A child process that is killed and reaped when dropped, so a test that
/// fails (panics) half-way leaks no `lethe serve`.
pub struct Reaped(pub std::process::Child);

impl std::ops::Deref for Reaped {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// `lethe serve` on a free port, scheduling only the jobs named in `only`
/// (none: `--no-schedule`, it takes queued runs only), stderr to a file in
/// the config folder (for post-mortems). Killed when dropped.
pub fn spawn_serve(mut cmd: Command, log: &Path, only: &[&str]) -> Reaped {
    let err = std::fs::File::create(log).unwrap();
    if !cmd.get_envs().any(|(k, _)| k == "LETHE_HTTP_LISTEN") {
        cmd.env("LETHE_HTTP_LISTEN", "127.0.0.1:0");
    }
    cmd.arg("serve");
    if only.is_empty() {
        cmd.arg("--no-schedule");
    }
    for job in only {
        cmd.args(["--only", job]);
    }
    Reaped(
        cmd.stdout(std::process::Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap(),
    )
}

/// An S3 client straight to moto (not through Lethe), to check what is stored.
pub fn s3_client(moto: &str) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .http_client(lethe::aws::http_client())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(moto)
        .force_path_style(true)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// A new bucket named `{stem}-<uuid>` in moto, with versioning on.
pub async fn versioned_bucket(s3: &aws_sdk_s3::Client, stem: &str) -> String {
    use aws_sdk_s3::types::{BucketVersioningStatus, VersioningConfiguration};
    let bucket = format!("{stem}-{}", uuid::Uuid::new_v4().simple());
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    s3.put_bucket_versioning()
        .bucket(&bucket)
        .versioning_configuration(
            VersioningConfiguration::builder()
                .status(BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
        .unwrap();
    bucket
}

/// `lethe run JOB --json` through `cmd`: the run's JSON, whatever its status.
pub fn run_job(mut cmd: Command, job: &str, extra: &[&str]) -> serde_json::Value {
    let out = cmd
        .args(["run", job, "--json"])
        .args(extra)
        .output()
        .unwrap();
    let v = stdout_json(&out);
    assert!(
        v["status"].is_string(),
        "{v}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    v
}

/// `cmd` with its clock starting at `start` (UTC, `YYYY-MM-DD HH:MM:SS`) and
/// running `speed` times faster than real time, through libfaketime (`lib`,
/// from `LETHE_TEST_LIBFAKETIME`). Only a SQLite store follows this clock.
pub fn faked(mut cmd: Command, lib: &str, start: &str, speed: u32) -> Command {
    cmd.env("LD_PRELOAD", lib)
        .env("FAKETIME", format!("@{start} x{speed}"))
        .env("TZ", "UTC");
    cmd
}

/// One integer from the application database at `url` (PostgreSQL or SQLite), e.g. a count.
pub async fn app_i64(url: &str, sql: &str) -> i64 {
    if url.starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(url)
            .await
            .expect("connect app db");
        sqlx::query_scalar(sql)
            .fetch_one(&mut conn)
            .await
            .expect(sql)
    } else {
        let mut conn = sqlx::SqliteConnection::connect(url)
            .await
            .expect("connect app db");
        sqlx::query_scalar(sql)
            .fetch_one(&mut conn)
            .await
            .expect(sql)
    }
}

/// Runs SQL (several statements) on the application database at `url`.
pub async fn app_exec(url: &str, sql: &str) {
    if url.starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(url)
            .await
            .expect("connect app db");
        sqlx::raw_sql(sql).execute(&mut conn).await.expect(sql);
    } else {
        let mut conn = sqlx::SqliteConnection::connect(url)
            .await
            .expect("connect app db");
        sqlx::raw_sql(sql).execute(&mut conn).await.expect(sql);
    }
}

/// The first column of every row `sql` returns from the application database at `url`, as text.
pub async fn app_strings(url: &str, sql: &str) -> Vec<String> {
    if url.starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(url)
            .await
            .expect("connect app db");
        sqlx::query_scalar(sql)
            .fetch_all(&mut conn)
            .await
            .expect(sql)
    } else {
        let mut conn = sqlx::SqliteConnection::connect(url)
            .await
            .expect("connect app db");
        sqlx::query_scalar(sql)
            .fetch_all(&mut conn)
            .await
            .expect(sql)
    }
}

/// The entries of a sealed (zstd + age) tar archive, such as an export: name → bytes.
pub fn archive_entries(
    sealed: &[u8],
    identity: &age::x25519::Identity,
) -> std::collections::BTreeMap<String, Vec<u8>> {
    use std::io::Read;
    let ids: Vec<Box<dyn age::Identity>> = vec![Box::new(identity.clone())];
    let mut tar_bytes = Vec::new();
    lethe::backup::decode(sealed, &ids, &mut tar_bytes).expect("the archive opens");
    let mut entries = std::collections::BTreeMap::new();
    for e in tar::Archive::new(&tar_bytes[..]).entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().to_string();
        let mut body = Vec::new();
        e.read_to_end(&mut body).unwrap();
        entries.insert(name, body);
    }
    entries
}

/// `archive_entries` with every entry as UTF-8 text.
pub fn archive_texts(
    sealed: &[u8],
    identity: &age::x25519::Identity,
) -> std::collections::BTreeMap<String, String> {
    archive_entries(sealed, identity)
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8(v).expect("a text entry")))
        .collect()
}
