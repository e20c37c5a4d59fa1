//! The org API over real HTTP against `lethe serve`: a deletion scheduled
//! (201) and refused under a hold (409), an export accepted (202) and done in
//! the background, and an org-scoped key kept to its own org (403).

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::org::fixture_with;

const ADMIN: &str = "k-org-admin-0123456789";
const TENANT2: &str = "k-org-tenant2-0123456789";

fn sha(k: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(k.as_bytes()))
}

/// One request over a fresh connection; the status and the JSON body.
fn call(addr: &str, method: &str, path: &str, key: &str, body: &str) -> (u16, Value) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn org_requests_over_http_respect_scopes_holds_and_the_callers_org() {
    let identity = age::x25519::Identity::generate();
    let extra = format!(
        "[object_store]\nurl = \"file://objects\"\n[backup]\nrecipients = [\"{}\"]\n\
         \n[[http.api_keys]]\nname = \"admin\"\nsha256 = \"{}\"\nscopes = [\"submit\", \"read\"]\n\
         \n[[http.api_keys]]\nname = \"tenant-2\"\nsha256 = \"{}\"\nscopes = [\"submit\", \"read\"]\norg = \"2\"\n",
        identity.to_public(),
        sha(ADMIN),
        sha(TENANT2)
    );
    let f = fixture_with(false, "", &extra).await.unwrap();
    let addr = format!("127.0.0.1:{}", crate::common::free_port());
    let mut cmd = f.lethe();
    cmd.env("LETHE_HTTP_LISTEN", &addr);
    let _serve = crate::common::spawn_serve(cmd, &f.c.path().join("serve.log"), &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while crate::common::http_get(&addr, "/readyz").map_or(0, |r| r.0) != 200 {
        assert!(Instant::now() < deadline, "serve did not become ready");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Tenant 2's key may not act for org 3, nor read it.
    let (code, v) = call(
        &addr,
        "POST",
        "/v1/orgs/3/deletions",
        TENANT2,
        r#"{"reason": "x"}"#,
    );
    assert_eq!(code, 403, "{v}");
    assert_eq!(call(&addr, "GET", "/v1/orgs/3", TENANT2, "").0, 403);

    // Its own deletion is scheduled; a second while it is open conflicts.
    let body = r#"{"reason": "contract ended", "after": "14d", "contact": "admin@two.example"}"#;
    let (code, v) = call(&addr, "POST", "/v1/orgs/2/deletions", TENANT2, body);
    assert_eq!(code, 201, "{v}");
    assert_eq!(
        (v["state"].as_str(), v["kind"].as_str()),
        (Some("scheduled"), Some("deletion"))
    );
    assert_eq!(
        call(&addr, "POST", "/v1/orgs/2/deletions", TENANT2, body).0,
        409
    );
    let (code, v) = call(
        &addr,
        "POST",
        "/v1/orgs/2/deletions",
        TENANT2,
        r#"{"reason": "x", "after": "1y"}"#,
    );
    assert_eq!(code, 422, "{v}");
    assert_eq!(
        call(
            &addr,
            "POST",
            "/v1/orgs/2/deletions",
            TENANT2,
            r#"{"bogus": 1}"#
        )
        .0,
        400
    );

    // A hold on org 3 refuses its deletion, naming the hold.
    crate::common::run_ok(
        f.lethe()
            .args(["hold", "add", "--org", "3", "--reason", "litigation"]),
    );
    let (code, v) = call(
        &addr,
        "POST",
        "/v1/orgs/3/deletions",
        ADMIN,
        r#"{"reason": "x"}"#,
    );
    assert_eq!(code, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("litigation"), "{v}");
    assert_eq!(
        call(
            &addr,
            "POST",
            "/v1/orgs/99/deletions",
            ADMIN,
            r#"{"reason": "x"}"#
        )
        .0,
        404
    );

    // An export is accepted at once and finishes in the background.
    let (code, v) = call(&addr, "POST", "/v1/orgs/2/exports", TENANT2, "");
    assert_eq!(code, 202, "{v}");
    let id = v["id"].clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    let done = loop {
        let (_, status) = call(&addr, "GET", "/v1/orgs/2", TENANT2, "");
        let r = status["requests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .cloned()
            .unwrap();
        if r["state"] != "scheduled" {
            break r;
        }
        assert!(Instant::now() < deadline, "the export never finished: {r}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(done["state"], "done", "{done}");
    let object = done["result"]["object"].as_str().unwrap();
    assert!(f.c.path().join("objects").join(object).exists(), "{done}");
    assert_eq!(
        f.count("SELECT count(*) FROM events WHERE org_id = 2")
            .await,
        40
    );
}
