//! Delivery of a subject's export from S3 (moto, over HTTP): the presigned
//! link mailed to the DPO fetches the archive, byte for byte the stored
//! object, which opens with the export key; once the link has expired the
//! next run deletes the archive, and the link finds nothing.

use crate::common::{run_ok, stdout_json, ConfigDir};
use crate::dsr::{DATA_MAP, FIXTURE};

/// A GET of `url` (plain HTTP) over a raw socket: status and body bytes.
fn get(url: &str) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("an http:// link");
    let (addr, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    assert!(!head.to_ascii_lowercase().contains("chunked"), "{head}");
    (code, buf[split + 4..].to_vec())
}

/// The link in the text part of the "data export ready" mail.
fn mailed_link(dir: &std::path::Path) -> String {
    let mail = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .find(|m| m.contains("data export ready"))
        .expect("the DPO's mail");
    // Quoted-printable: soft line breaks, and `=` written `=3D`.
    let text = mail.replace("=\r\n", "").replace("=3D", "=");
    let start = text.find("http://").expect("a link");
    text[start..]
        .split(|c: char| c.is_whitespace() || c == '"' || c == '<' || c == '>')
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_mailed_presigned_link_fetches_the_archive_until_it_expires() {
    let Some(moto) = crate::common::server_env("LETHE_TEST_MOTO_URL") else {
        return;
    };
    let bucket = format!("lethe-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    crate::common::s3_client(&moto)
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    let identity = age::x25519::Identity::generate();
    let extra = format!(
        "[object_store]\nurl = \"s3://{bucket}/lethe\"\nendpoint = \"{moto}\"\nregion = \"us-east-1\"\npath_style = true\n\
         [backup]\nrecipients = [\"{}\"]\n[dsr]\nexport_link_ttl = \"4s\"\n{DATA_MAP}",
        identity.to_public()
    );
    let c = ConfigDir::full(None, None, "", "", &extra);
    let app = format!("sqlite://{}", c.path().join("app.db").display());
    let pool = sqlx::SqlitePool::connect(&app).await.unwrap();
    sqlx::raw_sql(FIXTURE).execute(&pool).await.unwrap();
    for kind in ["dsr.process", "mail.flush"] {
        c.job(
            kind,
            &format!("kind = \"{kind}\"\nschedule = \"0 0 3 * * *\"\nmax_attempts = 1\n"),
        );
    }
    run_ok(c.lethe_aws().arg("migrate"));
    let submit = [
        "dsr",
        "submit",
        "--kind",
        "export",
        "--subject",
        "member@x.example",
        "--json",
    ];
    let v = stdout_json(&run_ok(c.lethe_aws().args(submit)));
    assert_eq!(v["state"], "verified", "{v}");
    let run = stdout_json(&run_ok(c.lethe_aws().args([
        "run",
        "dsr.process",
        "--json",
    ])));
    assert_eq!(run["status"], "succeeded", "{run}");
    let shown = stdout_json(&run_ok(c.lethe_aws().args([
        "dsr",
        "show",
        &v["id"].to_string(),
        "--json",
    ])));
    run_ok(c.lethe_aws().args(["run", "mail.flush"]));
    let link = mailed_link(&c.path().join("mail"));
    assert!(link.contains("X-Amz-Expires=4"), "{link}");

    let (code, body) = get(&link);
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    use sha2::Digest;
    assert_eq!(
        hex::encode(sha2::Sha256::digest(&body)),
        shown["result"]["sha256"].as_str().unwrap(),
        "the link serves the stored archive"
    );
    let files = crate::common::archive_texts(&body, &identity);
    let logs: Vec<serde_json::Value> = serde_json::from_str(&files["logs.json"]).unwrap();
    assert_eq!(logs.len(), 3, "every log row of the subject");

    // moto does not enforce a presigned URL's expiry (S3 does, by the signed
    // X-Amz-Date + X-Amz-Expires); Lethe deletes the archive once the link
    // has expired, so the link serves nothing after the next run either way.
    std::thread::sleep(std::time::Duration::from_secs(5));
    let run = stdout_json(&run_ok(c.lethe_aws().args([
        "run",
        "dsr.process",
        "--json",
    ])));
    assert_eq!(run["result"]["exports_expired"], 1, "{run}");
    let (code, _) = get(&link);
    assert_eq!(code, 404, "the archive is gone");
}

/// A bucket on moto for one test.
async fn bucket(moto: &str) -> String {
    let bucket = format!("lethe-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    crate::common::s3_client(moto)
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    bucket
}

#[tokio::test(flavor = "multi_thread")]
async fn the_subject_gets_a_link_and_separately_a_password_that_open_their_copy() {
    let (Some(moto), Some(smtp), Some(python)) = (
        crate::common::server_env("LETHE_TEST_MOTO_URL"),
        crate::common::server_env("LETHE_TEST_SMTP"),
        crate::common::server_env("LETHE_TEST_PYTHON"),
    ) else {
        return;
    };
    let maildir = crate::common::server_env("LETHE_TEST_MAILDIR").unwrap();
    let bucket = bucket(&moto).await;
    let (backup_key, export_key) = (
        age::x25519::Identity::generate(),
        age::x25519::Identity::generate(),
    );
    let port = smtp.rsplit_once(':').unwrap().1;
    let mail = format!(
        "transport = \"smtp\"\n[mail.smtp]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\""
    );
    // Each run mails a subject of its own, so the shared sink's other mail is not read.
    let subject = format!(
        "s{}@x.example",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let extra = format!(
        "[object_store]\nurl = \"s3://{bucket}/lethe\"\nendpoint = \"{moto}\"\nregion = \"us-east-1\"\npath_style = true\n\
         [backup]\nrecipients = [\"{}\"]\n[dsr]\nexport_recipients = [\"{}\"]\ndeliver_to_subject = true\n{DATA_MAP}",
        backup_key.to_public(),
        export_key.to_public()
    );
    let c = ConfigDir::full(None, None, "", &mail, &extra);
    let app = format!("sqlite://{}", c.path().join("app.db").display());
    let pool = sqlx::SqlitePool::connect(&app).await.unwrap();
    sqlx::raw_sql(FIXTURE).execute(&pool).await.unwrap();
    sqlx::query("UPDATE users SET email = ? WHERE email = 'member@x.example'")
        .bind(&subject)
        .execute(&pool)
        .await
        .unwrap();
    for kind in ["dsr.process", "mail.flush"] {
        c.job(
            kind,
            &format!("kind = \"{kind}\"\nschedule = \"0 0 3 * * *\"\nmax_attempts = 1\n"),
        );
    }
    run_ok(c.lethe_aws().arg("migrate"));
    let args = [
        "dsr",
        "submit",
        "--kind",
        "export",
        "--subject",
        &subject,
        "--json",
    ];
    let v = stdout_json(&run_ok(c.lethe_aws().args(args)));
    let run = stdout_json(&run_ok(c.lethe_aws().args([
        "run",
        "dsr.process",
        "--json",
    ])));
    assert_eq!(run["status"], "succeeded", "{run}");
    let id = v["id"].to_string();
    let shown = stdout_json(&run_ok(c.lethe_aws().args(["dsr", "show", &id, "--json"])));
    let copy = &shown["result"]["subject_copy"];
    assert_eq!(copy["mailed_to_subject"], true, "{shown}");
    run_ok(c.lethe_aws().args(["run", "mail.flush"]));

    // The subject, with nothing but the two mails and an unzip tool.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let opened = loop {
        let out = std::process::Command::new(&python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/dsr/open_subject_copy.py"
            ))
            .args([&maildir, &subject])
            .output()
            .unwrap();
        if out.status.success() || std::time::Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let stderr = String::from_utf8_lossy(&opened.stderr);
    assert!(opened.status.success(), "{stderr}");
    let got: serde_json::Value = serde_json::from_slice(&opened.stdout).unwrap();
    assert_eq!(got["link_mail_has_password"], false, "{got}");
    assert_eq!(got["password_mail_has_link"], false, "{got}");
    assert_eq!(got["wrong_password_refused"], true, "{got}");
    assert_eq!(got["all_encrypted"], true, "{got}");
    assert_eq!(
        got["tables"]["logs"], 3,
        "every log row of the subject: {got}"
    );
    assert_eq!(
        got["csv_rows"]["logs"], 3,
        "and the same rows as CSV: {got}"
    );
    assert_eq!(got["tables"]["users"], 1, "{got}");
    assert!(got["entries"]["README.txt"].as_u64().unwrap() > 0, "{got}");

    // The DPO's archive opens with the export key, not with the backup key.
    let s3 = crate::common::s3_client(&moto);
    let object = shown["result"]["object"].as_str().unwrap();
    let sealed = s3
        .get_object()
        .bucket(&bucket)
        .key(format!("lethe/{object}"))
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    let files = crate::common::archive_texts(&sealed, &export_key);
    assert!(files.contains_key("logs.json"));
    let ids: Vec<Box<dyn age::Identity>> = vec![Box::new(backup_key.clone())];
    assert!(
        age::Decryptor::new(&sealed[..])
            .unwrap()
            .decrypt(ids.iter().map(|i| i.as_ref() as &dyn age::Identity))
            .is_err(),
        "the backup key does not open an export"
    );

    // The password left the outbox with its mail: no copy stays in Lethe's store.
    let store =
        sqlx::SqlitePool::connect(&format!("sqlite://{}", c.path().join("lethe.db").display()))
            .await
            .unwrap();
    let bodies: Vec<(String, String)> = sqlx::query_as(
        "SELECT subject, text_body FROM mail_outbox WHERE subject LIKE 'The password%'",
    )
    .fetch_all(&store)
    .await
    .unwrap();
    assert_eq!(bodies.len(), 1);
    assert_eq!(bodies[0].1, lethe::store::WIPED_BODY);
    let audit: Vec<String> = sqlx::query_scalar("SELECT details FROM audit_events")
        .fetch_all(&store)
        .await
        .unwrap();
    assert!(
        audit.iter().any(|d| d.contains("mailed_to_subject")),
        "evidence of the delivery"
    );
    assert!(
        !audit.iter().any(|d| d.contains(&subject)),
        "no evidence names the subject's address"
    );
    // The passphrase is nowhere but in the subject's mail.
    let password = got["password"].as_str().unwrap();
    assert_eq!(password.len(), 29, "{got}");
    assert!(
        !audit.iter().any(|d| d.contains(password)),
        "not in evidence"
    );
    let mut seen = serde_json::to_string(&shown).unwrap();
    for args in [
        &["jobs", "history", "--json"][..],
        &["dsr", "list", "--json"],
    ] {
        seen.push_str(&String::from_utf8_lossy(
            &run_ok(c.lethe_aws().args(args)).stdout,
        ));
    }
    assert!(!seen.contains(password), "not in any --json output");
    let bodies: Vec<String> = sqlx::query_scalar("SELECT text_body || html_body FROM mail_outbox")
        .fetch_all(&store)
        .await
        .unwrap();
    assert!(
        !bodies.iter().any(|b| b.contains(password)),
        "not left in the outbox"
    );
}

#[test]
fn an_export_key_that_is_also_a_backup_key_is_refused_unless_allowed() {
    let key = age::x25519::Identity::generate().to_public().to_string();
    let cfg = |dsr: &str| {
        ConfigDir::full(
            None,
            None,
            "",
            "",
            &format!("[object_store]\nurl = \"file://o\"\n[backup]\nrecipients = [\"{key}\"]\n[dsr]\n{dsr}\n{DATA_MAP}"),
        )
    };
    let same = cfg(&format!("export_recipients = [\"{key}\"]"));
    let out = same.lethe().arg("check").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("also in backup.recipients") && err.contains("export_to_backup_keys"),
        "{err}"
    );
    // No export key: the config loads (retention and backups need none), and
    // `lethe check` warns (an export then fails, naming the setting).
    let none = cfg("export_to_backup_keys = false");
    let out = none.lethe().args(["check", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let check = v["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "export delivery"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(check["status"], "warn", "{v}");
    assert!(
        check["detail"]
            .as_str()
            .unwrap_or("")
            .contains("dsr.export_recipients is empty"),
        "{check}"
    );
    let allowed = cfg(&format!(
        "export_recipients = [\"{key}\"]\nexport_to_backup_keys = true"
    ));
    let out = allowed.lethe().args(["dsr", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("backup.recipients"));
}

/// The demo, as its README promises: the member's export reaches them by mail
/// (a link, and separately a password) and opens without Lethe; the
/// rectification survives the restore of an older backup; a request whose
/// identity was never checked expires.
#[test]
fn the_demo_delivers_keeps_a_rectification_and_expires_the_unverified() {
    let Some(python) = crate::common::server_env("LETHE_TEST_PYTHON") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let v = stdout_json(&run_ok(
        crate::common::lethe()
            .args(["demo", "--json", "--dir"])
            .arg(&dir),
    ));
    let dsr = v["dsr"].as_array().unwrap();
    let of = |kind: &str| dsr.iter().find(|d| d["kind"] == kind).unwrap();
    assert_eq!(of("rectification")["state"], "completed", "{dsr:?}");
    let unverified = dsr
        .iter()
        .find(|d| d["intake"].as_str().unwrap_or("").contains("unverified"))
        .unwrap();
    assert_eq!(
        (unverified["state"].as_str(), unverified["reason"].as_str()),
        (Some("rejected"), Some("identity_unverified")),
        "{unverified}"
    );
    let restore = &v["restore"];
    assert_eq!(restore["rectifications_reapplied"], 1, "{restore}");
    assert_eq!(
        restore["member_name"],
        lethe::demo::CORRECTED_NAME,
        "{restore}"
    );

    let out = std::process::Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/dsr/open_subject_copy.py"
        ))
        .arg(dir.join("mail"))
        .arg(lethe::demo::PLAIN_MEMBER)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["tables"]["users"], 1, "{got}");
    assert_eq!(got["wrong_password_refused"], true, "{got}");
    assert!(
        got["entries"]
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.starts_with("files/documents/")),
        "{got}"
    );
}
