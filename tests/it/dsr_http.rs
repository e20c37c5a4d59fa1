//! The DSR HTTP API at its edges, over real HTTP against `lethe serve`: a burst
//! of submits bounded by the process's pools (503 + Retry-After, never 500),
//! `Idempotency-Key` reuse for a different request (422), malformed keys (400),
//! racing retries, and oversized bodies.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{run_ok, stdout_json, ConfigDir};
use serde_json::Value;

const KEY: &str = "k-http-edges-0123456789";

const APP: &str = r#"
[app]
subjects = { table = "users", id = "id", email = "email" }
memberships = { table = "memberships", org = "org_id", subject = "user_id", role = "role" }
"#;

/// `lethe serve` with no jobs in its catalog (so nothing but the API runs),
/// killed when dropped.
struct Api {
    c: ConfigDir,
    /// Killed and reaped when dropped.
    _serve: crate::common::Reaped,
    addr: String,
}

impl Api {
    /// Every request in the store, by subject.
    fn requests_by_subject(&self) -> HashMap<String, Vec<Value>> {
        let list = stdout_json(&run_ok(
            self.c
                .lethe()
                .args(["dsr", "list", "--json", "--limit", "10000"]),
        ));
        let mut by: HashMap<String, Vec<Value>> = HashMap::new();
        for r in list["requests"].as_array().unwrap() {
            by.entry(r["subject"].as_str().unwrap().to_string())
                .or_default()
                .push(r.clone());
        }
        by
    }

    fn post(&self, idem: Option<&[u8]>, body: &str) -> Reply {
        let mut headers: Vec<(&str, &[u8])> =
            vec![("Authorization", b"Bearer k-http-edges-0123456789")];
        if let Some(k) = idem {
            headers.push(("Idempotency-Key", k));
        }
        request(&self.addr, "POST", "/v1/dsr", &headers, body.as_bytes())
    }
}

const SCHEMA: &str = "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE);
CREATE TABLE memberships (org_id INTEGER, user_id INTEGER, role TEXT);";

/// `users`: u0@x.example … u{n-1}@x.example, each a member of org 1 (even
/// i) or org 2 (odd i). `extra`: TOML appended to lethe.toml. `pg`: app and store in two
/// PostgreSQL databases (so the app's connections can be counted alone).
async fn start(pg: bool, users: usize, database: &str, http: &str) -> Option<(Api, String)> {
    start_with(pg, users, database, http, "").await
}

async fn start_with(
    pg: bool,
    users: usize,
    database: &str,
    http: &str,
    extra: &str,
) -> Option<(Api, String)> {
    use sha2::Digest;
    let inserts: String = (0..users)
        .map(|i| {
            format!(
                "INSERT INTO users (id, email) VALUES ({id}, 'u{i}@x.example');\n\
                 INSERT INTO memberships VALUES ({org}, {id}, 'member');\n",
                id = i + 1,
                org = i % 2 + 1
            )
        })
        .collect();
    let (c, app_db) = if pg {
        let app = crate::common::fresh_pg_db().await?;
        let store = crate::common::fresh_pg_db().await?;
        let pool = sqlx::PgPool::connect(&app).await.unwrap();
        sqlx::raw_sql(&format!("{SCHEMA}\n{inserts}"))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
        let name = app.rsplit('/').next().unwrap().to_string();
        (ConfigDir::full(Some(&store), Some(&app), "", "", APP), name)
    } else {
        let c = ConfigDir::full(None, None, "", "", APP);
        let url = format!("sqlite://{}", c.path().join("app.db").display());
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        sqlx::raw_sql(&format!("{SCHEMA}\n{inserts}"))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
        (c, String::new())
    };
    let hash = hex::encode(sha2::Sha256::digest(KEY.as_bytes()));
    let cfg = std::fs::read_to_string(c.config()).unwrap();
    std::fs::write(
        c.config(),
        cfg.replace("[database]\n", &format!("[database]\n{database}\n"))
            .replace(
                "[http]\n",
                &format!("[http]\napi_key_hashes = [\"{hash}\"]\n{http}\n"),
            )
            + extra,
    )
    .unwrap();
    run_ok(c.lethe().arg("migrate"));
    let addr = format!("127.0.0.1:{}", crate::common::free_port());
    let mut cmd = c.lethe();
    cmd.env("LETHE_HTTP_LISTEN", &addr);
    if !pg {
        // SQLite runs with the pseudonym key (request hashes are keyed HMACs),
        // PostgreSQL without (plain SHA-256): both paths are covered.
        cmd.env("LETHE_PSEUDONYM_KEY", "test-pseudonym-key-0123456789");
    }
    let serve = crate::common::spawn_serve(cmd, &c.path().join("serve.log"), &[]);
    let api = Api {
        c,
        _serve: serve,
        addr,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while crate::common::http_get(&api.addr, "/readyz").map_or(0, |r| r.0) != 200 {
        assert!(Instant::now() < deadline, "serve did not become ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some((api, app_db))
}

#[derive(Debug)]
struct Reply {
    code: u16,
    headers: String,
    body: Value,
}

impl Reply {
    fn retry_after(&self) -> Option<u64> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("retry-after")
                .then(|| v.trim().parse().ok())
                .flatten()
        })
    }
}

/// One HTTP/1.1 request over a fresh connection; header values are raw bytes.
fn request(addr: &str, method: &str, path: &str, headers: &[(&str, &[u8])], body: &[u8]) -> Reply {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    )
    .into_bytes();
    for (k, v) in headers {
        req.extend_from_slice(k.as_bytes());
        req.extend_from_slice(b": ");
        req.extend_from_slice(v);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(body);
    // The server may answer (413) before it read a huge body: a reset write is fine.
    let _ = s.write_all(&req);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Reply {
        code,
        headers: head.to_string(),
        body: serde_json::from_str(body).unwrap_or(Value::Null),
    }
}

fn erasure(subject: &str) -> String {
    format!(r#"{{"kind":"erasure","subject":"{subject}","jurisdiction":"gdpr"}}"#)
}

/// Samples how many connections the app database has until `stop`; returns the most seen.
fn sample_connections(db: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<i64> {
    let max = Arc::new(AtomicI64::new(0));
    tokio::spawn(async move {
        let admin = std::env::var("LETHE_TEST_PG_URL").unwrap();
        let pool = sqlx::PgPool::connect(&admin).await.unwrap();
        while !stop.load(Ordering::Relaxed) {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'lethe'",
            )
            .bind(&db)
            .fetch_one(&pool)
            .await
            .unwrap();
            max.fetch_max(n, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        max.load(Ordering::Relaxed)
    })
}

/// 300 concurrent submits for distinct subjects against a 2-connection app
/// pool and 4 API slots: each gets 201 (or 200, a replay of its own retry) or
/// 503 with Retry-After — never a 500 — and the app database never sees more
/// connections than its pool. Clients that retry after Retry-After all get in,
/// and every subject has exactly one request.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_300_submits_is_bounded_and_answered_201_or_503_with_retry_after() {
    const N: usize = 300;
    let Some((api, app_db)) = start(
        true,
        N,
        "max_connections = 2",
        "max_concurrency = 4\nqueue_timeout = \"200ms\"",
    )
    .await
    else {
        return;
    };
    let api = Arc::new(api);
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_connections(app_db, stop.clone());

    let mut pending: Vec<usize> = (0..N).collect();
    let mut accepted: HashMap<usize, i64> = HashMap::new();
    let (mut rounds, mut busy) = (0, 0);
    while !pending.is_empty() {
        rounds += 1;
        assert!(
            rounds <= 60,
            "{} submits still refused after 60 rounds",
            pending.len()
        );
        let a = api.clone();
        let batch = pending.clone();
        let replies: Vec<(usize, Reply)> = tokio::task::spawn_blocking(move || {
            std::thread::scope(|s| {
                let hs: Vec<_> = batch
                    .iter()
                    .map(|&i| {
                        let a = &a;
                        s.spawn(move || {
                            let key = format!("burst-{i}");
                            (
                                i,
                                a.post(Some(key.as_bytes()), &erasure(&format!("u{i}@x.example"))),
                            )
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            })
        })
        .await
        .unwrap();
        pending.clear();
        for (i, r) in replies {
            match r.code {
                201 | 200 => {
                    let id = r.body["id"].as_i64().expect("a request id");
                    if let Some(prev) = accepted.insert(i, id) {
                        assert_eq!(prev, id, "subject {i} accepted twice as different requests");
                    }
                }
                503 => {
                    assert!(r.retry_after().is_some(), "503 without Retry-After: {r:?}");
                    busy += 1;
                    pending.push(i);
                }
                _ => panic!("submit {i} answered {}: {r:?}", r.code),
            }
        }
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let peak = sampler.await.unwrap();
    assert!(
        (1..=2).contains(&peak),
        "the app database saw {peak} connections from lethe; its pool is 2"
    );
    assert!(
        busy > 0,
        "the limit never bit: 4 slots, 200 ms queue, 300 at once"
    );
    let by_subject = api.requests_by_subject();
    for (i, id) in &accepted {
        let rs = &by_subject[&format!("u{i}@x.example")];
        assert_eq!(rs.len(), 1, "subject {i}: {rs:?}");
        assert_eq!(rs[0]["id"].as_i64(), Some(*id));
    }
    assert_eq!(by_subject.len(), N);
}

/// Same key + same body: the first request. Same key + a different body: 422
/// naming the conflict, and nothing recorded. Keys that are not 1–255 visible
/// ASCII characters: 400 naming the header. Racing retries: one request.
async fn idempotency_key_is_bound_to_its_request(pg: bool) {
    let Some((api, _)) = start(pg, 40, "", "").await else {
        return;
    };
    let first = api.post(Some(b"key-1"), &erasure("u0@x.example"));
    assert_eq!(first.code, 201, "{first:?}");
    let again = api.post(Some(b"key-1"), &erasure("u0@x.example"));
    assert_eq!((again.code, &again.body["id"]), (200, &first.body["id"]));
    // The subject's email in another case and spacing is the same request.
    let same = api.post(Some(b"key-1"), &erasure(" U0@X.example"));
    assert_eq!((same.code, &same.body["id"]), (200, &first.body["id"]));

    for (what, body) in [
        ("another subject", erasure("u1@x.example")),
        (
            "another kind",
            r#"{"kind":"export","subject":"u0@x.example","jurisdiction":"gdpr"}"#.to_string(),
        ),
        (
            "another jurisdiction",
            r#"{"kind":"erasure","subject":"u0@x.example","jurisdiction":"uu_pdp"}"#.to_string(),
        ),
    ] {
        let r = api.post(Some(b"key-1"), &body);
        assert_eq!(r.code, 422, "{what}: {r:?}");
        let msg = r.body["error"].as_str().unwrap_or_default();
        assert!(
            msg.contains("Idempotency-Key") && msg.contains("different request"),
            "{what}: {msg}"
        );
        assert_eq!(r.body["request_id"], first.body["id"]);
    }
    let by = api.requests_by_subject();
    assert!(
        !by.contains_key("u1@x.example"),
        "the conflicting request was recorded"
    );
    assert_eq!(by["u0@x.example"].len(), 1, "{:?}", by["u0@x.example"]);
    if !pg {
        // With the pseudonym key, the store holds a keyed hash, not a plain one of the email.
        let store = format!("sqlite://{}", api.c.path().join("lethe.db").display());
        let pool = sqlx::SqlitePool::connect(&store).await.unwrap();
        let h: String = sqlx::query_scalar(
            "SELECT request_hash FROM dsr_requests WHERE idempotency_key LIKE '%:key-1'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert!(h.starts_with("hmac-sha256:") && h.len() == 12 + 64, "{h}");
    }

    let long_ok = "k".repeat(255);
    let long_bad = "k".repeat(256);
    for (key, want) in [
        ("clé-1".as_bytes(), 400),
        (b"\xff\xfe".as_slice(), 400),
        (b"".as_slice(), 400),
        (b"a b".as_slice(), 400),
        (long_bad.as_bytes(), 400),
        (long_ok.as_bytes(), 201),
    ] {
        let r = api.post(Some(key), &erasure("u2@x.example"));
        assert_eq!(
            r.code,
            want,
            "key {:?}: {r:?}",
            String::from_utf8_lossy(key)
        );
        if want == 400 {
            let msg = r.body["error"].as_str().unwrap_or_default();
            assert!(
                msg.contains("Idempotency-Key") && msg.contains("1 to 255 visible ASCII"),
                "{msg}"
            );
        }
    }
    assert_eq!(api.requests_by_subject()["u2@x.example"].len(), 1);

    // Racing: two identical submits under one key → one request; two different
    // bodies under one key → one request and one 422.
    for round in 0..4 {
        let key = format!("race-{round}");
        let (a, b) = (3 + 2 * round, 4 + 2 * round);
        let [r1, r2, r3] = std::thread::scope(|s| {
            let k = key.as_bytes();
            let h1 = s.spawn(|| api.post(Some(k), &erasure(&format!("u{a}@x.example"))));
            let h2 = s.spawn(|| api.post(Some(k), &erasure(&format!("u{a}@x.example"))));
            let h3 = s.spawn(|| api.post(Some(k), &erasure(&format!("u{b}@x.example"))));
            [h1.join().unwrap(), h2.join().unwrap(), h3.join().unwrap()]
        });
        let mut codes = vec![r1.code, r2.code, r3.code];
        codes.sort();
        let by = api.requests_by_subject();
        let (na, nb) = (
            by.get(&format!("u{a}@x.example")).map_or(0, Vec::len),
            by.get(&format!("u{b}@x.example")).map_or(0, Vec::len),
        );
        if r3.code == 201 {
            assert_eq!(
                (codes, na, nb),
                (vec![201, 422, 422], 0, 1),
                "round {round}"
            );
        } else {
            assert_eq!(
                (codes, na, nb),
                (vec![200, 201, 422], 1, 0),
                "round {round}"
            );
            assert_eq!(r1.body["id"], r2.body["id"], "round {round}");
        }
    }

    // A body over the limit is refused before anything is read into a request.
    let huge = format!(
        r#"{{"kind":"erasure","subject":"u30@x.example","jurisdiction":"{}"}}"#,
        "x".repeat(1 << 20)
    );
    let r = api.post(None, &huge);
    assert_eq!(r.code, 413, "{r:?}");
    assert!(!api.requests_by_subject().contains_key("u30@x.example"));
    assert_eq!(
        crate::common::http_get(&api.addr, "/healthz").unwrap().0,
        200
    );
}

mod sqlite {
    #[tokio::test(flavor = "multi_thread")]
    async fn idempotency_key_is_bound_to_its_request() {
        super::idempotency_key_is_bound_to_its_request(false).await
    }
}

mod postgres {
    #[tokio::test(flavor = "multi_thread")]
    async fn idempotency_key_is_bound_to_its_request() {
        super::idempotency_key_is_bound_to_its_request(true).await
    }
}

/// Named, scoped keys: a submit-only key can neither list nor read requests
/// (403), a read-only key cannot submit, the audit actor names the key, and
/// a key that acts for one org submits only for its members and reads only
/// its own requests (another caller's request is a 404, not a 403).
async fn api_keys_have_names_scopes_and_an_optional_org(pg: bool) {
    use sha2::Digest;
    let sha = |k: &str| hex::encode(sha2::Sha256::digest(k.as_bytes()));
    let extra = format!(
        "\n[[http.api_keys]]\nname = \"intake\"\nsha256 = \"{}\"\nscopes = [\"submit\"]\n\
         \n[[http.api_keys]]\nname = \"auditor\"\nsha256 = \"{}\"\nscopes = [\"read\"]\n\
         \n[[http.api_keys]]\nname = \"tenant-2\"\nsha256 = \"{}\"\nscopes = [\"submit\", \"read\"]\norg = \"2\"\n\
         \n[[data_map]]\ntable = \"memberships\"\nclass = \"account\"\norg = \"org_id\"\nsubject = \"user_id\"\nexport = true\n",
        sha("k-intake-0123456789"),
        sha("k-auditor-0123456789"),
        sha("k-tenant-0123456789")
    );
    let Some((api, _)) = start_with(pg, 6, "", "", &extra).await else {
        return;
    };
    let call = |key: &str, method: &str, path: &str, body: &str| {
        let auth = format!("Bearer {key}");
        request(
            &api.addr,
            method,
            path,
            &[("Authorization", auth.as_bytes())],
            body.as_bytes(),
        )
    };
    let created = call(
        "k-intake-0123456789",
        "POST",
        "/v1/dsr",
        &erasure("u0@x.example"),
    );
    assert_eq!(created.code, 201, "{created:?}");
    let id = created.body["id"].as_i64().unwrap();
    for path in ["/v1/dsr".to_string(), format!("/v1/dsr/{id}")] {
        let r = call("k-intake-0123456789", "GET", &path, "");
        assert_eq!(r.code, 403, "submit-only key read {path}: {r:?}");
        assert_eq!(
            call("k-auditor-0123456789", "GET", &path, "").code,
            200,
            "{path}"
        );
    }
    let r = call(
        "k-auditor-0123456789",
        "POST",
        "/v1/dsr",
        &erasure("u2@x.example"),
    );
    assert_eq!(r.code, 403, "read-only key submitted: {r:?}");

    // Org 2's key: u1 is a member of org 2; u4 of org 1; nobody@ does not exist.
    let own = call(
        "k-tenant-0123456789",
        "POST",
        "/v1/dsr",
        &erasure("u1@x.example"),
    );
    assert_eq!(own.code, 201, "{own:?}");
    assert_eq!(
        own.body["org"], "2",
        "an org's key asks about its own workspace only"
    );
    let elsewhere = call(
        "k-tenant-0123456789",
        "POST",
        "/v1/dsr",
        r#"{"kind":"export","subject":"u1@x.example","org":"1"}"#,
    );
    assert_eq!(elsewhere.code, 403, "{elsewhere:?}");
    // An unscoped key may limit a request to one org, which must exist.
    let limited = r#"{"kind":"export","subject":"u3@x.example","org":"2"}"#;
    let limited = call("k-intake-0123456789", "POST", "/v1/dsr", limited);
    assert_eq!(
        (limited.code, &limited.body["org"]),
        (201, &Value::from("2")),
        "{limited:?}"
    );
    let nowhere = r#"{"kind":"export","subject":"u3@x.example","org":"7"}"#;
    assert_eq!(
        call("k-intake-0123456789", "POST", "/v1/dsr", nowhere).code,
        404
    );
    // Unverified, then verified over the API by its own caller only.
    let unverified = r#"{"kind":"export","subject":"u5@x.example","identity_verified":false}"#;
    let waiting = call("k-tenant-0123456789", "POST", "/v1/dsr", unverified);
    assert_eq!(
        (waiting.code, &waiting.body["state"]),
        (201, &Value::from("received")),
        "{waiting:?}"
    );
    let how = r#"{"method":"account_login","by":"tenant portal"}"#;
    let path = |r: &Reply| format!("/v1/dsr/{}/verify", r.body["id"]);
    assert_eq!(
        call("k-tenant-0123456789", "POST", &path(&limited), how).code,
        404
    );
    // Not even a key without an org verifies another caller's request.
    assert_eq!(
        call("k-intake-0123456789", "POST", &path(&waiting), how).code,
        404
    );
    let verified = call("k-tenant-0123456789", "POST", &path(&waiting), how);
    assert_eq!(
        (verified.code, &verified.body["state"]),
        (200, &Value::from("verified")),
        "{verified:?}"
    );
    assert_eq!(
        call("k-tenant-0123456789", "POST", &path(&waiting), how).code,
        409
    );
    let other = call(
        "k-tenant-0123456789",
        "POST",
        "/v1/dsr",
        &erasure("u4@x.example"),
    );
    let unknown = call(
        "k-tenant-0123456789",
        "POST",
        "/v1/dsr",
        &erasure("nobody@x.example"),
    );
    assert_eq!(
        (other.code, unknown.code),
        (403, 403),
        "{other:?} {unknown:?}"
    );
    assert_eq!(
        other.body, unknown.body,
        "the same answer: nothing learnt about other orgs"
    );
    let listed = call("k-tenant-0123456789", "GET", "/v1/dsr", "");
    let ids: Vec<i64> = listed.body["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "its own two requests: {ids:?}");
    assert!(ids.contains(&own.body["id"].as_i64().unwrap()));
    assert_eq!(
        call("k-tenant-0123456789", "GET", &format!("/v1/dsr/{id}"), "").code,
        404
    );

    let audit = String::from_utf8(run_ok(api.c.lethe().args(["audit", "export"])).stdout).unwrap();
    let actors: Vec<String> = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["action"] == "dsr.received")
        .map(|e| e["actor"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        actors,
        vec![
            "http:intake",
            "http:tenant-2",
            "http:intake",
            "http:tenant-2"
        ]
    );
}

mod scoped_keys {
    #[tokio::test(flavor = "multi_thread")]
    async fn sqlite() {
        super::api_keys_have_names_scopes_and_an_optional_org(false).await
    }
    #[tokio::test(flavor = "multi_thread")]
    async fn postgres() {
        super::api_keys_have_names_scopes_and_an_optional_org(true).await
    }
}
