//! Backups against real servers: SQLite + local folder, PostgreSQL + S3 (moto)
//! with multipart upload; aborted uploads leave no parts; corruption is caught
//! by verify; GFS pruning; the RPO alarm mails ops once.

use std::path::Path;

use crate::common::{run_ok, stdout_json, ConfigDir};
use serde_json::Value;

const SQLITE_APP: &str = r#"
CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL);
CREATE TABLE notes (id INTEGER PRIMARY KEY, user_id INTEGER, body TEXT);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500)
    INSERT INTO users SELECT i, 'u' || i || '@x.example' FROM n;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
    INSERT INTO notes SELECT i, i % 500, hex(randomblob(40)) FROM n;
"#;

fn backup_section(identity: &age::x25519::Identity, extra: &str) -> String {
    use age::secrecy::ExposeSecret;
    format!(
        "[backup]\nrecipients = [\"{}\"]\nidentity_env = \"TEST_AGE_IDENTITY_{}\"\npart_size_mib = 5\n{extra}\n",
        identity.to_public(),
        // Each test has its own variable so parallel tests never see each other's key.
        &blake(identity.to_string().expose_secret())
    )
}

fn blake(s: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(s.as_bytes())[..6]).to_uppercase()
}

pub(super) struct Setup {
    pub(super) c: ConfigDir,
    identity: age::x25519::Identity,
    pub(super) app_url: String,
}

impl Setup {
    pub(super) fn lethe(&self) -> std::process::Command {
        use age::secrecy::ExposeSecret;
        let secret = self.identity.to_string();
        let mut cmd = self.c.lethe_aws();
        cmd.env(
            format!("TEST_AGE_IDENTITY_{}", blake(secret.expose_secret())),
            secret.expose_secret(),
        );
        cmd
    }

    pub(super) fn run(&self, job: &str, extra: &[&str]) -> Value {
        crate::common::run_job(self.lethe(), job, extra)
    }

    pub(super) fn list(&self) -> Vec<Value> {
        let v = stdout_json(&run_ok(self.lethe().args(["backup", "list", "--json"])));
        v["backups"].as_array().unwrap().clone()
    }
}

fn jobs(c: &ConfigDir) {
    for kind in [
        "backup.create",
        "backup.verify",
        "backup.prune",
        "backup.rpo_check",
        "mail.flush",
    ] {
        c.job(
            kind,
            &format!("kind = \"{kind}\"\nschedule = \"0 0 3 * * *\"\nmax_attempts = 1\n"),
        );
    }
}

async fn sqlite_setup(extra_backup: &str) -> Setup {
    let identity = age::x25519::Identity::generate();
    let extra = format!(
        "[object_store]\nurl = \"file://objects\"\n{}",
        backup_section(&identity, extra_backup)
    );
    let c = ConfigDir::full(None, None, "", "", &extra);
    let app_url = format!("sqlite://{}", c.path().join("app.db").display());
    let pool = sqlx::SqlitePool::connect(&app_url).await.unwrap();
    sqlx::raw_sql(SQLITE_APP).execute(&pool).await.unwrap();
    pool.close().await;
    jobs(&c);
    run_ok(c.lethe().arg("migrate"));
    Setup {
        c,
        identity,
        app_url,
    }
}

/// PostgreSQL app database (with ~13 MB of incompressible-ish text) and an S3 bucket in moto.
pub(super) async fn pg_s3_setup(
    bucket_exists: bool,
    extra_backup: &str,
) -> Option<(Setup, aws_sdk_s3::Client, String)> {
    let moto = crate::common::server_env("LETHE_TEST_MOTO_URL")?;
    let url = crate::common::fresh_pg_db().await?;
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL);
         INSERT INTO users SELECT g, 'u' || g || '@x.example' FROM generate_series(1, 1000) g;
         CREATE TABLE blobs (id int PRIMARY KEY, body text NOT NULL);
         INSERT INTO blobs SELECT g, md5(random()::text) || md5(random()::text) FROM generate_series(1, 200000) g;",
    )
    .execute(&pool)
    .await
    .unwrap();
    let bucket = format!("lethe-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let s3 = crate::common::s3_client(&moto);
    if bucket_exists {
        s3.create_bucket().bucket(&bucket).send().await.unwrap();
    }
    let identity = age::x25519::Identity::generate();
    let extra = format!(
        "[object_store]\nurl = \"s3://{bucket}/lethe\"\nendpoint = \"{moto}\"\nregion = \"us-east-1\"\npath_style = true\nupload_concurrency = 2\n{}",
        backup_section(&identity, extra_backup)
    );
    // Store and app in one PostgreSQL database, as in production (store in schema `lethe`).
    let c = ConfigDir::full(Some(&url), Some(&url), "", "", &extra);
    jobs(&c);
    run_ok(c.lethe().arg("migrate"));
    Some((
        Setup {
            c,
            identity,
            app_url: url,
        },
        s3,
        bucket,
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_backup_is_age_encrypted_verifies_and_restores() {
    let s = sqlite_setup("").await;
    let v = s.run("backup.create", &[]);
    assert_eq!(v["status"], "succeeded", "{v}");
    let id = v["result"]["id"].as_str().unwrap().to_string();
    let list = s.list();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], id.as_str());
    let object =
        s.c.path()
            .join("objects")
            .join(list[0]["object"].as_str().unwrap());
    let bytes = std::fs::read(&object).unwrap();
    assert!(
        bytes.starts_with(b"age-encryption.org/v1\n"),
        "stored object is age-encrypted"
    );
    assert!(
        !bytes.windows(8).any(|w| w == b"x.exampl"),
        "no plaintext leaks into the object"
    );
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(
            s.c.path()
                .join("objects")
                .join(list[0]["manifest"].as_str().unwrap()),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["sha256"], list[0]["sha256"]);
    assert_eq!(manifest["row_counts"]["notes"], 3000);
    assert_eq!(
        manifest["encryption"]["recipients"][0],
        s.identity.to_public().to_string()
    );

    let out = run_ok(s.lethe().args(["backup", "verify", &id, "--json"]));
    let r = stdout_json(&out);
    assert_eq!(
        (r["ok"].as_bool(), r["tables"].as_u64()),
        (Some(true), Some(2))
    );
    assert!(
        s.list()[0]["restore_ms"].as_i64().is_some(),
        "RTO evidence recorded"
    );

    let target = s.c.path().join("restored.db");
    run_ok(
        s.lethe()
            .args(["backup", "restore", &id, "--to"])
            .arg(format!("sqlite://{}", target.display())),
    );
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", target.display()))
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM notes")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 3000);
    let again = s
        .lethe()
        .args(["backup", "restore", &id, "--to"])
        .arg(format!("sqlite://{}", target.display()))
        .output()
        .unwrap();
    assert_eq!(
        again.status.code(),
        Some(2),
        "never restores over an existing file"
    );
    let missing = s
        .lethe()
        .args(["backup", "verify", "nope"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    let _ = s.app_url;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_backup_streams_multipart_to_s3_and_verifies_by_restore() {
    let Some((s, s3, bucket)) = pg_s3_setup(true, "").await else {
        return;
    };
    let v = s.run("backup.create", &[]);
    assert_eq!(v["status"], "succeeded", "{v}");
    let list = s.list();
    let object = format!("lethe/{}", list[0]["object"].as_str().unwrap());
    let head = s3
        .head_object()
        .bucket(&bucket)
        .key(&object)
        .send()
        .await
        .unwrap();
    let etag = head
        .e_tag()
        .unwrap_or_default()
        .trim_matches('"')
        .to_string();
    let parts: u32 = etag
        .rsplit_once('-')
        .map(|(_, n)| n.parse().unwrap())
        .unwrap_or(1);
    assert!(
        parts >= 2,
        "a multipart upload of 5 MiB parts (ETag {etag}, {} bytes)",
        head.content_length().unwrap_or(0)
    );
    let first = s3
        .head_object()
        .bucket(&bucket)
        .key(&object)
        .part_number(1)
        .send()
        .await
        .unwrap();
    assert_eq!(
        first.content_length(),
        Some(5 * 1024 * 1024),
        "parts are exactly part_size"
    );
    let uploads = s3
        .list_multipart_uploads()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    assert!(uploads.uploads().is_empty(), "no open multipart uploads");
    let body = s3
        .get_object()
        .bucket(&bucket)
        .key(&object)
        .range("bytes=0-21")
        .send()
        .await
        .unwrap();
    assert_eq!(
        &body.body.collect().await.unwrap().into_bytes()[..],
        b"age-encryption.org/v1\n"
    );
    let manifest = s3
        .get_object()
        .bucket(&bucket)
        .key(format!("lethe/{}", list[0]["manifest"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    let manifest: Value =
        serde_json::from_slice(&manifest.body.collect().await.unwrap().into_bytes()).unwrap();
    assert_eq!(manifest["row_counts"]["public.blobs"], 200000);
    assert!(manifest["database"]["server_version"]
        .as_str()
        .unwrap()
        .starts_with("15"));

    let id = list[0]["id"].as_str().unwrap().to_string();
    let r = s.run("backup.verify", &["--param", &format!("id=\"{id}\"")]);
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["result"]["ok"], true);

    // Restore into a new empty database: the same rows come back.
    let admin = std::env::var("LETHE_TEST_PG_URL").unwrap();
    let target = crate::common::fresh_pg_db().await.unwrap();
    run_ok(s.lethe().args(["backup", "restore", &id, "--to", &target]));
    let pool = sqlx::PgPool::connect(&target).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM blobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 200000);
    let again = s
        .lethe()
        .args(["backup", "restore", &id, "--to", &target])
        .output()
        .unwrap();
    assert_eq!(
        again.status.code(),
        Some(2),
        "refuses a database that has tables"
    );
    let _ = admin;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_dump_aborts_the_upload_leaving_no_parts_and_no_catalog_row() {
    // A fault-injecting pg_dump: 12 MB of output, then it dies.
    let bin = tempfile::tempdir().unwrap();
    let script = bin.path().join("pg_dump");
    std::fs::write(&script, "#!/bin/sh\nhead -c 12000000 /dev/urandom\necho 'pg_dump: error: connection to server lost' >&2\nexit 1\n").unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(&script).unwrap().permissions(),
        0o755,
    );
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let extra = format!("pg_bin = \"{}\"", bin.path().display());
    let Some((s, s3, bucket)) = pg_s3_setup(true, &extra).await else {
        return;
    };
    let v = s.run("backup.create", &[]);
    assert_eq!(v["status"], "dead", "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("connection to server lost"),
        "{v}"
    );
    let uploads = s3
        .list_multipart_uploads()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    assert!(
        uploads.uploads().is_empty(),
        "the multipart upload was aborted: {:?}",
        uploads.uploads()
    );
    let objects = s3.list_objects_v2().bucket(&bucket).send().await.unwrap();
    assert!(objects.contents().is_empty(), "nothing was stored");
    assert!(s.list().is_empty(), "nothing recorded as a good backup");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_bucket_fails_the_run_with_a_clear_error() {
    let Some((s, _s3, bucket)) = pg_s3_setup(false, "").await else {
        return;
    };
    let v = s.run("backup.create", &[]);
    assert_eq!(v["status"], "dead");
    let err = v["error"].as_str().unwrap();
    assert!(
        err.contains("NoSuchBucket") || err.contains(&bucket),
        "{err}"
    );
    assert!(err.contains("start upload"), "{err}");
    assert!(s.list().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_detects_a_corrupted_object_and_mails_ops() {
    let s = sqlite_setup("").await;
    let id = s.run("backup.create", &[])["result"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let object =
        s.c.path()
            .join("objects")
            .join(s.list()[0]["object"].as_str().unwrap());
    let mut bytes = std::fs::read(&object).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&object, bytes).unwrap();

    let v = s.run("backup.verify", &[]);
    assert_eq!(v["status"], "dead", "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("failed verification"),
        "{v}"
    );
    let b = &s.list()[0];
    assert_eq!(
        (b["id"].as_str(), b["verify_ok"].as_bool()),
        (Some(id.as_str()), Some(false))
    );
    assert!(b["verify_error"].as_str().unwrap().len() > 10);
    s.run("mail.flush", &[]);
    let mails: Vec<String> = std::fs::read_dir(s.c.path().join("mail"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert!(mails
        .iter()
        .any(|m| m.contains("FAILED verification") && m.contains("To: ops@test.example")));
    // The RPO check does not count a failed backup as good.
    assert_eq!(s.run("backup.rpo_check", &[])["result"]["ok"], false);
}

#[tokio::test(flavor = "multi_thread")]
async fn gfs_prune_removes_objects_but_never_the_newest_verified_backup() {
    let s = sqlite_setup("keep = { last = 1 }").await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            s.run("backup.create", &[])["result"]["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    run_ok(s.lethe().args(["backup", "verify", &ids[0]]));
    let dry = s.run("backup.prune", &["--dry-run"]);
    assert_eq!(
        dry["result"]["would_remove"],
        serde_json::json!([ids[1].clone()]),
        "{dry}"
    );
    assert_eq!(s.list().len(), 3, "a dry run removes nothing");
    let real = s.run("backup.prune", &[]);
    assert_eq!(
        real["result"]["removed"],
        serde_json::json!([ids[1].clone()])
    );
    let left: Vec<String> = s
        .list()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, vec![ids[2].clone(), ids[0].clone()]);
    let files = std::fs::read_dir(s.c.path().join("objects/backups"))
        .unwrap()
        .count();
    assert_eq!(files, 4, "two backups left, each an object and a manifest");
}

#[tokio::test(flavor = "multi_thread")]
async fn rpo_check_mails_ops_once_while_no_recent_verified_backup_exists() {
    let s = sqlite_setup("rpo = \"1h\"").await;
    let first = s.run("backup.rpo_check", &[]);
    assert_eq!(
        (
            first["result"]["ok"].as_bool(),
            first["result"]["alerted"].as_bool()
        ),
        (Some(false), Some(true))
    );
    let second = s.run("backup.rpo_check", &[]);
    assert_eq!(
        second["result"]["alerted"], false,
        "one alert per stale state, not per check"
    );
    s.run("mail.flush", &[]);
    let mails = std::fs::read_dir(s.c.path().join("mail")).unwrap().count();
    assert_eq!(mails, 1);
    let id = s.run("backup.create", &[])["result"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    run_ok(s.lethe().args(["backup", "verify", &id]));
    assert_eq!(s.run("backup.rpo_check", &[])["result"]["ok"], true);
    let _ = Path::new("");
}

#[test]
fn a_bad_recipient_key_is_a_config_error() {
    let c = ConfigDir::full(
        None,
        None,
        "",
        "",
        "[backup]\nrecipients = [\"age1notakey\"]\n",
    );
    let out = c.lethe().arg("check").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not an age public key") && err.contains("lethe.toml:"),
        "{err}"
    );
}

/// Rewrites the stored manifest of the only backup with `edit`.
fn tamper_manifest(s: &Setup, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let path =
        s.c.path()
            .join("objects")
            .join(s.list()[0]["manifest"].as_str().unwrap());
    let mut m: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(m.as_object_mut().unwrap());
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_fails_on_a_manifest_without_row_counts_or_with_none() {
    for (what, edit) in [
        (
            "missing",
            Box::new(|m: &mut serde_json::Map<String, Value>| {
                m.remove("row_counts");
            }) as Box<dyn FnOnce(&mut serde_json::Map<String, Value>)>,
        ),
        (
            "empty",
            Box::new(|m: &mut serde_json::Map<String, Value>| {
                m.insert("row_counts".into(), serde_json::json!({}));
            }),
        ),
        (
            "altered",
            Box::new(|m: &mut serde_json::Map<String, Value>| {
                m.insert("row_counts".into(), serde_json::json!({"users": 500}));
            }),
        ),
    ] {
        let s = sqlite_setup("").await;
        let id = s.run("backup.create", &[])["result"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        tamper_manifest(&s, edit);
        let out = s
            .lethe()
            .args(["backup", "verify", &id, "--json"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{what}");
        let r = stdout_json(&out);
        assert_eq!(r["ok"], false, "{what}: {r}");
        assert!(
            r["error"].as_str().unwrap_or("").contains("row_counts")
                || r["error"].as_str().unwrap_or("").contains("differs"),
            "{what}: {r}"
        );
        assert_eq!(
            s.list()[0]["verify_ok"],
            false,
            "{what}: not marked verified"
        );
        // The job fails too, and ops are mailed as for any failed verification.
        let v = s.run("backup.verify", &["--param", &format!("id=\"{id}\"")]);
        assert_eq!(v["status"], "dead", "{what}: {v}");
        s.run("mail.flush", &[]);
        let mails: Vec<String> = std::fs::read_dir(s.c.path().join("mail"))
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect();
        assert!(
            mails.iter().any(|m| m.contains("FAILED verification")),
            "{what}"
        );
        assert_eq!(s.run("backup.rpo_check", &[])["result"]["ok"], false);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_fails_on_an_s3_manifest_without_row_counts() {
    let Some((s, s3, bucket)) = pg_s3_setup(true, "").await else {
        return;
    };
    let id = s.run("backup.create", &[])["result"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let key = format!("lethe/{}", s.list()[0]["manifest"].as_str().unwrap());
    let body = s3
        .get_object()
        .bucket(&bucket)
        .key(&key)
        .send()
        .await
        .unwrap();
    let mut m: Value =
        serde_json::from_slice(&body.body.collect().await.unwrap().into_bytes()).unwrap();
    m.as_object_mut().unwrap().remove("row_counts");
    s3.put_object()
        .bucket(&bucket)
        .key(&key)
        .body(serde_json::to_vec(&m).unwrap().into())
        .send()
        .await
        .unwrap();
    let out = s
        .lethe()
        .args(["backup", "verify", &id, "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let r = stdout_json(&out);
    assert!(r["error"].as_str().unwrap().contains("row_counts"), "{r}");
    assert_eq!(s.list()[0]["verify_ok"], false);
}
