//! Faults injected into real processes and real servers. Each test names what
//! it injects and what must hold; together they back the README's
//! "Reliability" table. (SMTP down: `tests/mail.rs`; a purge SIGKILLed
//! mid-batch: `tests/retention.rs`; PostgreSQL restarted mid-run:
//! `tests/pg_restart.rs`.)

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::common::fault_proxy::{s3_error, Fault, FaultProxy, Request, Rule};
use crate::common::{run_ok, stdout_json, wait_run_end, ConfigDir};
use serde_json::Value;

const RUNNER: &str =
    "lease = \"1s\"\nretry_base = \"100ms\"\nretry_max = \"300ms\"\npoll_interval = \"100ms\"";

/// A PostgreSQL app database of `rows` random rows, backed up to a moto
/// bucket reached only through a fault proxy running `rule`.
struct S3Setup {
    c: ConfigDir,
    identity: age::x25519::Identity,
    env_name: String,
    s3: aws_sdk_s3::Client,
    bucket: String,
    proxy: FaultProxy,
}

impl S3Setup {
    async fn new(rule: Rule, rows: u32, runner: &str) -> Option<S3Setup> {
        let moto = crate::common::server_env("LETHE_TEST_MOTO_URL")?;
        let url = crate::common::fresh_pg_db().await?;
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        sqlx::raw_sql(&format!(
            "CREATE TABLE blobs (id int PRIMARY KEY, body text NOT NULL);
             INSERT INTO blobs SELECT g, md5(random()::text) || md5(random()::text) FROM generate_series(1, {rows}) g;"
        ))
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
        let bucket = format!(
            "faults-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let s3 = crate::common::s3_client(&moto);
        s3.create_bucket().bucket(&bucket).send().await.unwrap();
        let proxy = FaultProxy::start(&moto, rule).await;
        let identity = age::x25519::Identity::generate();
        let env_name = format!(
            "TEST_AGE_IDENTITY_{}",
            uuid::Uuid::new_v4().simple().to_string()[..8].to_uppercase()
        );
        let extra = format!(
            "[object_store]\nurl = \"s3://{bucket}/lethe\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\npath_style = true\nupload_concurrency = 2\n\
             [backup]\nrecipients = [\"{}\"]\nidentity_env = \"{env_name}\"\npart_size_mib = 5\n",
            proxy.url,
            identity.to_public()
        );
        let c = ConfigDir::full(Some(&url), Some(&url), runner, "", &extra);
        for kind in ["backup.create", "backup.verify"] {
            // Disabled: a `serve` here only takes the runs the test queues.
            c.job(
                kind,
                &format!("kind = \"{kind}\"\nschedule = \"0 0 3 * * *\"\nenabled = false\nmax_attempts = 3\n"),
            );
        }
        run_ok(c.lethe().arg("migrate"));
        Some(S3Setup {
            c,
            identity,
            env_name,
            s3,
            bucket,
            proxy,
        })
    }

    fn lethe(&self) -> std::process::Command {
        use age::secrecy::ExposeSecret;
        let mut cmd = self.c.lethe_aws();
        cmd.env(&self.env_name, self.identity.to_string().expose_secret());
        cmd
    }

    fn run(&self, job: &str, extra: &[&str]) -> Value {
        crate::common::run_job(self.lethe(), job, extra)
    }

    /// Multipart uploads still open in the bucket, asked of moto directly.
    async fn open_uploads(&self) -> usize {
        self.s3
            .list_multipart_uploads()
            .bucket(&self.bucket)
            .send()
            .await
            .unwrap()
            .uploads()
            .len()
    }

    async fn objects(&self) -> Vec<String> {
        self.s3
            .list_objects_v2()
            .bucket(&self.bucket)
            .send()
            .await
            .unwrap()
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_string))
            .collect()
    }

    fn catalog(&self) -> Vec<Value> {
        let v = stdout_json(&run_ok(self.lethe().args(["backup", "list", "--json"])));
        v["backups"].as_array().unwrap().clone()
    }
}

fn is_complete(r: &Request) -> bool {
    r.method == "POST" && r.target.contains("uploadId=")
}

/// Injects: the first attempt of every UploadPart answered `503 SlowDown`,
/// the first CompleteMultipartUpload answered `500 InternalError`, and every
/// part that passes delayed 700 ms (a slow S3).
/// Must hold: the backup completes in one run attempt (the client retries),
/// no multipart upload is left open, and the stored backup verifies by restore.
#[tokio::test(flavor = "multi_thread")]
async fn s3_errors_and_slow_responses_are_retried_and_the_backup_completes() {
    let first_tries = Mutex::new(HashSet::new());
    let completes = AtomicUsize::new(0);
    let rule: Rule = Box::new(move |r: &Request| {
        if r.is_upload_part() {
            let part = r.target.clone();
            if first_tries.lock().unwrap().insert(part) {
                return Fault::Respond(503, "application/xml", s3_error("SlowDown"));
            }
            return Fault::Delay(Duration::from_millis(700));
        }
        if is_complete(r) && completes.fetch_add(1, Ordering::SeqCst) == 0 {
            return Fault::Respond(500, "application/xml", s3_error("InternalError"));
        }
        Fault::Pass
    });
    let Some(s) = S3Setup::new(rule, 300_000, "").await else {
        return;
    };
    let v = s.run("backup.create", &[]);
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(
        v["attempts"], 1,
        "the S3 client's retries absorbed the faults"
    );
    let parts = s.proxy.count(|r| r.is_upload_part());
    let injected = s.proxy.injected.load(Ordering::SeqCst);
    assert!(
        injected >= 3,
        "503s on every part (and a 500) were injected: {injected} of {parts} part requests"
    );
    assert_eq!(s.open_uploads().await, 0, "no orphan multipart upload");
    let id = v["result"]["id"].as_str().unwrap().to_string();
    let r = s.run("backup.verify", &["--param", &format!("id=\"{id}\"")]);
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["result"]["ok"], true, "{r}");
}

/// Injects: every UploadPart answered `503 SlowDown`, for good.
/// Must hold: the run fails with an error naming the S3 failure, the
/// multipart upload is aborted (no parts billed), nothing is stored, and no
/// catalog row claims a backup.
#[tokio::test(flavor = "multi_thread")]
async fn s3_failing_for_good_aborts_the_upload_and_records_no_backup() {
    let rule: Rule = Box::new(|r: &Request| {
        if r.is_upload_part() {
            Fault::Respond(503, "application/xml", s3_error("SlowDown"))
        } else {
            Fault::Pass
        }
    });
    let Some(s) = S3Setup::new(rule, 50_000, "").await else {
        return;
    };
    let v = s.run("backup.create", &[]);
    assert!(
        v["status"] == "failed" || v["status"] == "dead",
        "the run must not succeed: {v}"
    );
    let error = v["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("SlowDown") || error.contains("503"),
        "the error names the S3 failure: {error}"
    );
    assert_eq!(s.open_uploads().await, 0, "the upload was aborted");
    assert!(s.objects().await.is_empty(), "nothing stored");
    assert!(s.catalog().is_empty(), "no catalog row");
}

/// Injects: S3 refusing the credentials (`403 InvalidAccessKeyId` on every
/// request; moto itself accepts any key).
/// Must hold: the run fails without a retry storm, its error names the
/// refusal, and nothing is stored or recorded.
#[tokio::test(flavor = "multi_thread")]
async fn s3_refusing_the_credentials_fails_the_run_with_a_clear_error() {
    let rule: Rule = Box::new(|r: &Request| {
        if r.target.starts_with("/faults-") {
            Fault::Respond(403, "application/xml", s3_error("InvalidAccessKeyId"))
        } else {
            Fault::Pass
        }
    });
    let Some(s) = S3Setup::new(rule, 1_000, "").await else {
        return;
    };
    let v = s.run("backup.create", &[]);
    assert!(v["status"] == "failed" || v["status"] == "dead", "{v}");
    let error = v["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("InvalidAccessKeyId (HTTP 403)") && error.contains("AWS_ACCESS_KEY_ID"),
        "names the refusal and what to check, without the SDK's debug dump: {error}"
    );
    assert!(!error.contains("SdkBody"), "{error}");
    assert!(
        s.proxy.count(|_| true) <= 3,
        "an auth refusal is not retried: {} requests",
        s.proxy.count(|_| true)
    );
    assert!(s.objects().await.is_empty());
    assert!(s.catalog().is_empty());
}

/// Injects: SIGKILL of the `lethe serve` that is uploading a backup (parts
/// slowed to 1.5 s so the kill lands mid-upload), leaving a multipart upload
/// open in S3.
/// Must hold: a second `serve` rescues the run when the lease lapses; attempt
/// 2 aborts the orphaned upload and completes; afterwards no upload is open,
/// the bucket holds exactly one backup and its manifest, and the catalog one row.
#[tokio::test(flavor = "multi_thread")]
async fn serve_killed_mid_upload_is_rescued_and_leaves_no_orphan_parts() {
    let rule: Rule = Box::new(|r: &Request| {
        if r.is_upload_part() {
            Fault::Delay(Duration::from_millis(1500))
        } else {
            Fault::Pass
        }
    });
    let Some(s) = S3Setup::new(rule, 600_000, RUNNER).await else {
        return;
    };
    let mut a = crate::common::spawn_serve(s.lethe(), &s.c.path().join("serve-a.log"), &[]);
    run_ok(s.lethe().args(["run", "backup.create", "--detach"]));
    let until = Instant::now() + Duration::from_secs(60);
    while s.proxy.count(|r| r.is_upload_part()) == 0 {
        assert!(Instant::now() < until, "no part upload started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    crate::common::signal(&a, libc::SIGKILL);
    a.wait().unwrap();
    assert_eq!(
        s.open_uploads().await,
        1,
        "the killed process left its upload open"
    );

    let mut b = crate::common::spawn_serve(s.lethe(), &s.c.path().join("serve-b.log"), &[]);
    let run = wait_run_end(|| s.lethe(), "backup.create", 120);
    crate::common::signal(&b, libc::SIGTERM);
    crate::common::wait_exit(&mut b, 30);
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(run["attempts"], 2, "{run}");
    assert_eq!(run["result"]["orphans_aborted"], 1, "{run}");
    assert_eq!(s.open_uploads().await, 0, "no orphan parts remain");
    let objects = s.objects().await;
    assert_eq!(objects.len(), 2, "one backup and its manifest: {objects:?}");
    assert_eq!(s.catalog().len(), 1);
}

/// Injects: KMS answering `400 ThrottlingException` to the first attempt of
/// every request (a rate-limited KMS), through the fault proxy before moto.
/// Must hold: `keys rotate` still creates and wraps every org's keys; the
/// throttled calls were retried, not skipped.
#[tokio::test(flavor = "multi_thread")]
async fn kms_throttling_is_retried_and_rotation_completes() {
    let Some(moto) = crate::common::server_env("LETHE_TEST_MOTO_URL") else {
        return;
    };
    let seen = Mutex::new(HashSet::new());
    let rule: Rule = Box::new(move |r: &Request| {
        let Some(op) = r.kms_op() else {
            return Fault::Pass;
        };
        let fresh = seen
            .lock()
            .unwrap()
            .insert((op.to_string(), r.body.clone()));
        // CreateKey bodies repeat across orgs; throttle the first of each kind only.
        if fresh {
            Fault::Respond(
                400,
                "application/x-amz-json-1.1",
                r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#.into(),
            )
        } else {
            Fault::Pass
        }
    });
    let proxy = FaultProxy::start(&moto, rule).await;
    let keys = format!(
        "provider = \"aws\"\nkms_endpoint = \"{}\"\nregion = \"us-east-1\"\nconcurrency = 4",
        proxy.url
    );
    let c = ConfigDir::full(
        None,
        None,
        "",
        "",
        &format!(
            "[app]\nsubjects = {{ table = \"users\", id = \"id\", email = \"email\" }}\n\
             orgs = {{ table = \"orgs\", id = \"id\", closed_at = \"closed_at\" }}\n[keys]\n{keys}\n"
        ),
    );
    let url = format!("sqlite://{}", c.path().join("app.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT);
         CREATE TABLE orgs (id INTEGER PRIMARY KEY, closed_at TEXT);
         INSERT INTO orgs VALUES (1, NULL), (2, NULL), (3, NULL), (4, NULL);",
    )
    .execute(&pool)
    .await
    .unwrap();
    run_ok(c.lethe().arg("migrate"));
    let v = stdout_json(&run_ok(c.lethe_aws().args(["keys", "rotate", "--json"])));
    let injected = proxy.injected.load(Ordering::SeqCst);
    assert!(injected >= 2, "throttling was injected ({injected}): {v}");
    let st = stdout_json(&run_ok(c.lethe_aws().args(["keys", "status", "--json"])));
    let orgs = st["orgs"].as_array().unwrap();
    assert_eq!(orgs.len(), 4, "{st}");
    for o in orgs {
        assert!(
            o["kek_id"].as_str().is_some_and(|k| !k.is_empty()),
            "every org has a KMS key despite throttling: {o}"
        );
    }
}

/// Injects: SIGKILL of the `lethe serve` running an erasure while its single
/// transaction is part-way (an application transaction holds a row lock on
/// the last table the erasure touches, so it waits there).
/// Must hold: nothing is half-applied (the subject's rows in the tables
/// already processed are all still there after the kill); a second `serve`
/// rescues the run and the erasure completes once: rows gone or anonymised,
/// one `dsr.erased` event in the audit chain.
#[tokio::test(flavor = "multi_thread")]
async fn serve_killed_mid_erasure_applies_nothing_then_the_rescue_erases_once() {
    let Some(url) = crate::common::fresh_pg_db().await else {
        return;
    };
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE users (id serial PRIMARY KEY, email text NOT NULL UNIQUE, name text);
         CREATE TABLE logs (id serial PRIMARY KEY, user_id int, path text);
         CREATE TABLE audit (id serial PRIMARY KEY, user_id int, ip text);
         INSERT INTO users (email, name) VALUES ('keep@x.example', 'Kim'), ('gone@x.example', 'Gus');
         INSERT INTO logs (user_id, path) SELECT 2, '/p' || g FROM generate_series(1, 50) g;
         INSERT INTO logs (user_id, path) VALUES (1, '/kept');
         INSERT INTO audit (user_id, ip) VALUES (2, '203.0.113.7'), (1, '203.0.113.1');",
    )
    .execute(&pool)
    .await
    .unwrap();
    let map = r#"
[app]
subjects = { table = "users", id = "id", email = "email" }

[[data_map]]
table = "users"
class = "account"
subject = "id"
erasure = "anonymize"
anonymize = { email = "hmac", name = "fixed:Deleted user" }

[[data_map]]
table = "logs"
class = "logs"
subject = "user_id"
erasure = "delete"

[[data_map]]
table = "audit"
class = "audit"
subject = "user_id"
erasure = "anonymize"
anonymize = { ip = "null" }
"#;
    let c = ConfigDir::full(Some(&url), Some(&url), RUNNER, "", map);
    c.job(
        "dsr",
        "kind = \"dsr.process\"\nschedule = \"0 0 3 * * *\"\nenabled = false\nmax_attempts = 3\n",
    );
    let lethe = || {
        let mut cmd = c.lethe();
        cmd.env("LETHE_PSEUDONYM_KEY", "fault-test-pseudonym-key-0123456789");
        cmd
    };
    run_ok(lethe().arg("migrate"));
    let submitted = stdout_json(&run_ok(lethe().args([
        "dsr",
        "submit",
        "--kind",
        "erasure",
        "--subject",
        "gone@x.example",
        "--json",
    ])));
    let dsr_id = submitted["id"].as_i64().unwrap().to_string();

    // The application holds a lock on the subject's audit row: the erasure will wait there.
    let mut app_tx = pool.begin().await.unwrap();
    sqlx::query("SELECT id FROM audit WHERE user_id = 2 FOR UPDATE")
        .fetch_one(&mut *app_tx)
        .await
        .unwrap();
    let mut a = crate::common::spawn_serve(lethe(), &c.path().join("serve-a.log"), &[]);
    run_ok(lethe().args(["run", "dsr", "--detach"]));
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'lethe' AND wait_event_type = 'Lock'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(Instant::now() < until, "the erasure never reached the lock");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    crate::common::signal(&a, libc::SIGKILL);
    a.wait().unwrap();
    app_tx.rollback().await.unwrap();
    // The dead client's backend wakes, finds its client gone, and rolls back.
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let busy: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'lethe' AND state <> 'idle'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if busy == 0 {
            break;
        }
        assert!(Instant::now() < until, "the orphaned backend did not end");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logs: i64 = sqlx::query_scalar("SELECT count(*) FROM logs WHERE user_id = 2")
        .fetch_one(&pool)
        .await
        .unwrap();
    let email: String = sqlx::query_scalar("SELECT email FROM users WHERE id = 2")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        logs, 50,
        "no log row of the subject was deleted by the killed attempt"
    );
    assert_eq!(email, "gone@x.example", "nor was the account anonymised");

    let mut b = crate::common::spawn_serve(lethe(), &c.path().join("serve-b.log"), &[]);
    let run = wait_run_end(lethe, "dsr", 60);
    crate::common::signal(&b, libc::SIGTERM);
    crate::common::wait_exit(&mut b, 30);
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(run["attempts"], 2, "{run}");
    let shown = stdout_json(&run_ok(lethe().args(["dsr", "show", &dsr_id, "--json"])));
    assert_eq!(shown["state"], "completed", "{shown}");
    let logs: i64 = sqlx::query_scalar("SELECT count(*) FROM logs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        logs, 1,
        "the subject's logs are gone, the other user's stay"
    );
    let ip: Option<String> = sqlx::query_scalar("SELECT ip FROM audit WHERE user_id = 2")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(ip, None);
    let audit = String::from_utf8(run_ok(lethe().args(["audit", "export"])).stdout).unwrap();
    assert_eq!(
        audit.matches("\"action\":\"dsr.erased\"").count(),
        1,
        "erased once"
    );
}

/// Injects: every lease heartbeat of the store fails (a trigger on the queue
/// table rejects them, as a partition from the store would), while the
/// attempt's own work goes on. Must hold: the attempt stops itself before its
/// lease can lapse and commits nothing after that (its fenced end-of-job side
/// effect never happens); once heartbeats work again the next attempt runs to
/// its end, so the job's side effect happens exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn an_attempt_whose_heartbeats_fail_stops_before_its_lease_lapses() {
    let Some(url) = crate::common::fresh_pg_db().await else {
        return;
    };
    let runner =
        "lease = \"2s\"\nretry_base = \"200ms\"\nretry_max = \"500ms\"\npoll_interval = \"100ms\"";
    let c = ConfigDir::new(Some(&url), runner, "");
    c.job(
        "long",
        "kind = \"test.sleep\"\nschedule = \"0 0 0 1 1 *\"\nenabled = false\nmax_attempts = 3\ntimeout = \"1m\"\n[params]\nms = 5000\n",
    );
    run_ok(c.lethe().arg("migrate"));
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let _serve = crate::common::spawn_serve(c.lethe(), &c.path().join("serve.log"), &[]);
    run_ok(c.lethe().args(["run", "long", "--detach"]));
    let events = |action: &'static str| {
        let pool = pool.clone();
        async move {
            let rows: Vec<String> = sqlx::query_scalar(
                "SELECT details FROM lethe.audit_events WHERE action = $1 ORDER BY seq",
            )
            .bind(action)
            .fetch_all(&pool)
            .await
            .unwrap();
            rows.iter()
                .map(|d| serde_json::from_str::<Value>(d).unwrap())
                .collect::<Vec<_>>()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while events("test.sleep.started").await.is_empty() {
        assert!(Instant::now() < deadline, "the run never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // From now on a running run's lease cannot be extended.
    sqlx::raw_sql(
        "CREATE FUNCTION lethe.no_heartbeat() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'injected: heartbeat lost'; END $$;
         CREATE TRIGGER no_heartbeat BEFORE UPDATE ON lethe.job_runs FOR EACH ROW
           WHEN (OLD.state = 'running' AND NEW.state = 'running') EXECUTE FUNCTION lethe.no_heartbeat();",
    )
    .execute(&pool)
    .await
    .unwrap();
    // Attempt 1 must end (stopped by itself) well before its 5 s of work would.
    let stopped = loop {
        let row: Option<(String, Option<String>)> = sqlx::query_as(
            "SELECT state, error FROM lethe.job_runs WHERE job = 'long' AND state <> 'running'",
        )
        .fetch_optional(&pool)
        .await
        .unwrap();
        if let Some(r) = row {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "attempt 1 went on running with a lease it could not renew"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        stopped
            .1
            .as_deref()
            .unwrap_or("")
            .contains("lease could not be renewed"),
        "{stopped:?}"
    );
    sqlx::raw_sql("DROP TRIGGER no_heartbeat ON lethe.job_runs")
        .execute(&pool)
        .await
        .unwrap();
    let run = wait_run_end(|| c.lethe(), "long", 30);
    assert_eq!(run["state"], "succeeded", "{run}");
    // Attempt 1 slept on after it stopped? Its fenced side effect would be here.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let finished = events("test.sleep.finished").await;
    assert_eq!(
        finished.len(),
        1,
        "the job's side effect happened once: {finished:?}"
    );
    assert!(
        finished[0]["attempt"].as_i64().unwrap() >= 2,
        "{finished:?}"
    );
}

/// Injects: the KMS answering `400 DisabledException` (an operator disabled
/// the org's key) to every Decrypt, GenerateDataKey and ReEncrypt, through
/// the fault proxy before moto (moto itself does not enforce key state).
/// Must hold: `keys.reencrypt` fails loudly naming the cause and the fix,
/// and changes nothing (the values are not given up as unreadable, as a
/// shredded org's would be); `keys rotate --new-dek` exits 1 the same way;
/// once the key is enabled again, the same job moves every value.
#[tokio::test(flavor = "multi_thread")]
async fn a_disabled_kms_key_stops_reencrypt_and_rotation_loudly() {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    let Some(moto) = crate::common::server_env("LETHE_TEST_MOTO_URL") else {
        return;
    };
    let disabled = Arc::new(AtomicBool::new(false));
    let flag = disabled.clone();
    let rule: Rule = Box::new(move |r: &Request| {
        match r.kms_op() {
        Some("Decrypt" | "GenerateDataKey" | "ReEncrypt") if flag.load(Ordering::SeqCst) => {
            Fault::Respond(
                400,
                "application/x-amz-json-1.1",
                r#"{"__type":"DisabledException","message":"arn:aws:kms:us-east-1:123456789012:key/k is disabled."}"#.into(),
            )
        }
        _ => Fault::Pass,
    }
    });
    let proxy = FaultProxy::start(&moto, rule).await;
    let c = ConfigDir::full(
        None,
        None,
        "",
        "",
        &format!(
            "[app]\nsubjects = {{ table = \"users\", id = \"id\", email = \"email\" }}\n\
             orgs = {{ table = \"orgs\", id = \"id\", closed_at = \"closed_at\" }}\n\
             keys = {{ table = \"org_data_keys\" }}\n\
             [keys]\nprovider = \"aws\"\nkms_endpoint = \"{}\"\nregion = \"us-east-1\"\n\n\
             [[data_map]]\ntable = \"customers\"\nclass = \"customer_pii\"\norg = \"org_id\"\nencrypted = [\"nik\"]\n",
            proxy.url
        ),
    );
    c.job(
        "reencrypt",
        "kind = \"keys.reencrypt\"\nschedule = \"0 0 3 * * *\"\nmax_attempts = 1\n",
    );
    let url = format!("sqlite://{}", c.path().join("app.db").display());
    crate::common::app_exec(
        &url,
        "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT);
         CREATE TABLE orgs (id INTEGER PRIMARY KEY, closed_at TEXT);
         INSERT INTO orgs VALUES (1, NULL);
         CREATE TABLE org_data_keys (org_id INTEGER NOT NULL, version INTEGER NOT NULL, wrapped_key TEXT NOT NULL,
             kms_key_id TEXT NOT NULL, state TEXT NOT NULL, created_at TEXT NOT NULL, PRIMARY KEY (org_id, version));
         CREATE TABLE customers (id INTEGER PRIMARY KEY, org_id INTEGER NOT NULL, nik TEXT);",
    )
    .await;
    run_ok(c.lethe().arg("migrate"));
    run_ok(c.lethe_aws().args(["keys", "rotate"]));

    // The application seals three NIKs under version 1, as app.py would.
    let key = &crate::common::app_strings(
        &url,
        "SELECT wrapped_key || ' ' || kms_key_id FROM org_data_keys",
    )
    .await[0];
    let (wrapped, kek) = key.split_once(' ').unwrap();
    let kms = aws_sdk_kms::Client::from_conf(
        aws_sdk_kms::config::Builder::new()
            .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
            .http_client(lethe::aws::http_client())
            .region(aws_sdk_kms::config::Region::new("us-east-1"))
            .endpoint_url(&moto)
            .credentials_provider(aws_sdk_kms::config::Credentials::new(
                "testing", "testing", None, None, "test",
            ))
            .build(),
    );
    let dek = {
        use base64::Engine;
        let blob = base64::engine::general_purpose::STANDARD
            .decode(wrapped)
            .unwrap();
        let out = kms
            .decrypt()
            .key_id(kek)
            .ciphertext_blob(aws_sdk_kms::primitives::Blob::new(blob))
            .send()
            .await
            .unwrap();
        out.plaintext().unwrap().as_ref().to_vec()
    };
    let at = lethe::cipher::Binding {
        table: "customers",
        column: "nik",
        org: "1",
    };
    for id in 1..=3 {
        let sealed =
            lethe::cipher::seal(&dek, 1, at, format!("317100000000000{id}").as_bytes()).unwrap();
        crate::common::app_exec(
            &url,
            &format!("INSERT INTO customers VALUES ({id}, 1, '{sealed}')"),
        )
        .await;
    }
    run_ok(c.lethe_aws().args(["keys", "rotate", "--new-dek"]));
    let versions = || async {
        crate::common::app_strings(&url, "SELECT nik FROM customers ORDER BY id")
            .await
            .iter()
            .map(|n| lethe::cipher::dek_version(n).unwrap())
            .collect::<Vec<_>>()
    };

    disabled.store(true, Ordering::SeqCst);
    let run = crate::common::run_job(c.lethe_aws(), "reencrypt", &[]);
    assert_eq!(run["status"], "dead", "its one attempt failed: {run}");
    let error = run["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("is disabled")
            && error.contains("enable the key in the KMS, then run again"),
        "{run}"
    );
    assert_eq!(versions().await, [1, 1, 1], "nothing changed");
    let out = c
        .lethe_aws()
        .args(["keys", "rotate", "--new-dek"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("enable the key in the KMS"), "{stderr}");

    disabled.store(false, Ordering::SeqCst);
    let run = crate::common::run_job(c.lethe_aws(), "reencrypt", &[]);
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["result"]["reencrypted"], 3, "{run}");
    assert_eq!(versions().await, [2, 2, 2]);
}
