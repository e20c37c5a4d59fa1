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
