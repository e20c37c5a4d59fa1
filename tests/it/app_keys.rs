//! The application's key table (`[app.keys]`) on both databases: versions
//! added, re-wrapped, retired and destroyed exactly as asked, and `lethe
//! check` naming a key-table column the schema lacks.

use lethe::appdb::{AppDb, AppKey};
use lethe::config::KeysTable;

use crate::common::{app_exec, run_ok, stdout_json, ConfigDir};

fn table() -> KeysTable {
    serde_json::from_value(serde_json::json!({"table": "org_data_keys"})).unwrap()
}

const CREATE_PG: &str =
    "CREATE TABLE org_data_keys (org_id BIGINT NOT NULL, version INTEGER NOT NULL,
    wrapped_key TEXT NOT NULL, kms_key_id TEXT NOT NULL, state TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL, PRIMARY KEY (org_id, version))";
const CREATE_SQLITE: &str =
    "CREATE TABLE org_data_keys (org_id INTEGER NOT NULL, version INTEGER NOT NULL,
    wrapped_key TEXT NOT NULL, kms_key_id TEXT NOT NULL, state TEXT NOT NULL,
    created_at TEXT NOT NULL, PRIMARY KEY (org_id, version))";

fn key(org: &str, version: i64, wrapped: &str) -> AppKey {
    AppKey {
        org: org.into(),
        version,
        wrapped_key: wrapped.into(),
        kms_key_id: "kek-1".into(),
        state: "active".into(),
    }
}

async fn key_table_lifecycle(pg: bool) {
    let dir = tempfile::tempdir().unwrap();
    let url = if pg {
        let Some(url) = crate::common::fresh_pg_db().await else {
            return;
        };
        url
    } else {
        let path = dir.path().join("app.db");
        std::fs::write(&path, b"").unwrap();
        format!("sqlite://{}", path.display())
    };
    app_exec(&url, if pg { CREATE_PG } else { CREATE_SQLITE }).await;
    let db = AppDb::connect(&url).await.unwrap();
    let t = table();
    let now = chrono::Utc::now();
    for k in [key("7", 1, "w7a"), key("7", 2, "w7b"), key("8", 1, "w8a")] {
        db.app_key_add(&t, &k, now).await.unwrap();
    }
    // A version that exists already is refused, not duplicated.
    assert!(db
        .app_key_add(&t, &key("7", 2, "again"), now)
        .await
        .is_err());
    let all = db.app_keys(&t, None).await.unwrap();
    assert_eq!(
        all.iter()
            .map(|k| (k.org.as_str(), k.version, k.wrapped_key.as_str()))
            .collect::<Vec<_>>(),
        [("7", 1, "w7a"), ("7", 2, "w7b"), ("8", 1, "w8a")]
    );

    let mut rewrapped = key("7", 1, "w7a-rewrapped");
    rewrapped.kms_key_id = "kek-2".into();
    db.app_key_rewrap(&t, &rewrapped).await.unwrap();
    assert!(
        db.app_key_rewrap(&t, &key("9", 1, "x")).await.is_err(),
        "no such row"
    );
    assert!(db.app_key_retire(&t, "7", 1).await.unwrap());
    assert!(
        !db.app_key_retire(&t, "7", 1).await.unwrap(),
        "retired once"
    );
    let seven = db.app_keys(&t, Some("7")).await.unwrap();
    assert_eq!(
        seven
            .iter()
            .map(|k| (k.version, k.state.as_str(), k.kms_key_id.as_str()))
            .collect::<Vec<_>>(),
        [(1, "retired", "kek-2"), (2, "active", "kek-1")]
    );

    // Shredding empties every wrapped key of the org, and only of that org.
    assert_eq!(db.app_keys_destroy(&t, "7").await.unwrap(), 2);
    assert_eq!(db.app_keys_destroy(&t, "7").await.unwrap(), 0);
    let all = db.app_keys(&t, None).await.unwrap();
    assert!(all
        .iter()
        .filter(|k| k.org == "7")
        .all(|k| k.state == "destroyed" && k.wrapped_key.is_empty()));
    assert_eq!(
        all.iter().find(|k| k.org == "8").unwrap().wrapped_key,
        "w8a"
    );
    // A destroyed version is never brought back by a re-wrap.
    assert!(db.app_key_rewrap(&t, &key("7", 2, "back")).await.is_err());

    // An unknown state is reported, not guessed.
    app_exec(
        &url,
        "UPDATE org_data_keys SET state = 'paused' WHERE version = 1 AND wrapped_key = 'w8a'",
    )
    .await;
    let e = db.app_keys(&t, None).await.unwrap_err().to_string();
    assert!(e.contains("paused"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn key_table_lifecycle_sqlite() {
    key_table_lifecycle(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn key_table_lifecycle_postgres() {
    key_table_lifecycle(true).await;
}

#[test]
fn check_names_a_key_table_column_the_schema_lacks() {
    let c = ConfigDir::full(
        None,
        None,
        "",
        "",
        "[app]\nsubjects = { table = \"users\", id = \"id\", email = \"email\" }\nkeys = { table = \"org_data_keys\" }\n",
    );
    let db = c.path().join("app.db");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = format!("sqlite://{}", db.display());
    rt.block_on(app_exec(
        &url,
        "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT)",
    ));
    rt.block_on(app_exec(
        &url,
        "CREATE TABLE org_data_keys (org_id INTEGER, version INTEGER, wrapped TEXT, kms_key_id TEXT, state TEXT, created_at TEXT)",
    ));
    let out = c.lethe().args(["check", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(2), "{v}");
    let text = v.to_string();
    assert!(
        text.contains(
            "app.keys.wrapped_key column `wrapped_key` does not exist in `org_data_keys`"
        ),
        "{text}"
    );
}

/// A PostgreSQL application with `n` NIKs encrypted under version 1 of their
/// org's key (sealed here with the DEK the local keyring unwraps, as an
/// application would), one value not in the format and one NULL; then
/// version 2 is created, so every value is stale.
struct Encrypted {
    c: ConfigDir,
    url: String,
    db: AppDb,
    plain: Vec<(i64, i64, String)>,
}

impl Encrypted {
    async fn setup(n: i64, runner: &str, job_params: &str, customers: &str) -> Option<Encrypted> {
        let url = crate::common::fresh_pg_db().await?;
        let extra = "[app]\nsubjects = { table = \"users\", id = \"id\", email = \"email\" }\norgs = { table = \"orgs\", id = \"id\", closed_at = \"closed_at\" }\nkeys = { table = \"org_data_keys\" }\n\n[keys]\nprovider = \"local\"\ndek_rotation = \"4s\"\nkek_rotation = \"1000d\"\n\n[[data_map]]\ntable = \"customers\"\nclass = \"customer_pii\"\norg = \"org_id\"\nencrypted = [\"nik\"]\n";
        let c = ConfigDir::full(None, Some(&url), runner, "", extra);
        app_exec(
            &url,
            &format!(
                "CREATE TABLE users (id BIGINT PRIMARY KEY, email TEXT);
                 CREATE TABLE orgs (id BIGINT PRIMARY KEY, closed_at TIMESTAMPTZ);
                 INSERT INTO orgs VALUES (1, NULL), (2, NULL);
                 {CREATE_PG};
                 {customers};"
            ),
        )
        .await;
        c.job(
            "reencrypt",
            &format!("kind = \"keys.reencrypt\"\nschedule = \"0 0 3 * * *\"\nenabled = false\nmax_attempts = 3\n[params]\n{job_params}\n"),
        );
        run_ok(c.lethe().arg("migrate"));
        run_ok(c.lethe().args(["keys", "rotate", "--json"]));
        let db = AppDb::connect(&url).await.unwrap();
        let plain: Vec<(i64, i64, String)> = (1..=n)
            .map(|i| (i, 1 + i % 2, format!("3171234567{i:06}")))
            .collect();
        let e = Encrypted { c, url, db, plain };
        for (id, org, nik) in &e.plain {
            let sealed =
                lethe::cipher::seal(&e.dek(*org, 1).await, 1, at(*org), nik.as_bytes()).unwrap();
            app_exec(
                &e.url,
                &format!("INSERT INTO customers VALUES ({id}, {org}, '{sealed}')"),
            )
            .await;
        }
        app_exec(
            &e.url,
            &format!(
                "INSERT INTO customers VALUES ({}, 1, 'not-encrypted'), ({}, 2, NULL)",
                n + 1,
                n + 2
            ),
        )
        .await;
        std::thread::sleep(std::time::Duration::from_millis(4100));
        run_ok(e.c.lethe().args(["keys", "rotate", "--json"]));
        Some(e)
    }

    async fn dek(&self, org: i64, version: i64) -> Vec<u8> {
        use base64::Engine;
        use lethe::kms::Kms;
        let k = self
            .db
            .app_keys(&table(), Some(&org.to_string()))
            .await
            .unwrap();
        let k = k.into_iter().find(|k| k.version == version).unwrap();
        let wrapped = base64::engine::general_purpose::STANDARD
            .decode(&k.wrapped_key)
            .unwrap();
        let kms = lethe::kms::LocalKms::new(self.c.path().join("keyring.json"));
        kms.decrypt_dek(&k.kms_key_id, &wrapped).await.unwrap()
    }

    /// Each NIK's stored header version, after checking it decrypts to the
    /// original under that version (so a value encrypted twice would fail).
    async fn versions(&self) -> Vec<u32> {
        let pool = sqlx::PgPool::connect(&self.url).await.unwrap();
        let mut out = Vec::new();
        for (id, org, nik) in &self.plain {
            let stored: String = sqlx::query_scalar("SELECT nik FROM customers WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap();
            let v = lethe::cipher::dek_version(&stored).unwrap();
            let dek = self.dek(*org, i64::from(v)).await;
            assert_eq!(
                lethe::cipher::open(&dek, at(*org), &stored).unwrap(),
                nik.as_bytes(),
                "row {id}"
            );
            out.push(v);
        }
        out
    }
}

fn at(org: i64) -> lethe::cipher::Binding<'static> {
    let org: &'static str = if org == 1 { "1" } else { "2" };
    lethe::cipher::Binding {
        table: "customers",
        column: "nik",
        org,
    }
}

const CUSTOMERS: &str =
    "CREATE TABLE customers (id BIGINT PRIMARY KEY, org_id BIGINT NOT NULL, nik VARCHAR(200))";
/// One partition per org: a `ctid` repeats across partitions, so the walk
/// must tell them apart by `tableoid`.
const CUSTOMERS_PARTITIONED: &str =
    "CREATE TABLE customers (id BIGINT NOT NULL, org_id BIGINT NOT NULL, nik VARCHAR(200), PRIMARY KEY (id, org_id))
         PARTITION BY LIST (org_id);
     CREATE TABLE customers_1 PARTITION OF customers FOR VALUES IN (1);
     CREATE TABLE customers_2 PARTITION OF customers FOR VALUES IN (2)";

/// Org 2's rows live in an inheritance child: the parent's query reads
/// them, so the walk must visit the child too.
const CUSTOMERS_INHERITED: &str =
    "CREATE TABLE customers (id BIGINT PRIMARY KEY, org_id BIGINT NOT NULL, nik VARCHAR(200));
     CREATE TABLE customers_org2 () INHERITS (customers);
     CREATE FUNCTION customers_route() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
         IF NEW.org_id = 2 THEN INSERT INTO customers_org2 VALUES (NEW.*); RETURN NULL; END IF;
         RETURN NEW;
       END $$;
     CREATE TRIGGER customers_route BEFORE INSERT ON customers
       FOR EACH ROW EXECUTE FUNCTION customers_route()";

#[tokio::test(flavor = "multi_thread")]
async fn reencrypt_moves_postgres_values_to_the_newest_key() {
    reencrypt_moves_values(CUSTOMERS).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reencrypt_moves_every_value_of_a_partitioned_table() {
    reencrypt_moves_values(CUSTOMERS_PARTITIONED).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reencrypt_moves_every_value_of_an_inheritance_tree() {
    reencrypt_moves_values(CUSTOMERS_INHERITED).await;
}

/// `keys.reencrypt` on PostgreSQL with the local keyring: every value moves
/// to version 2 in batches of two and still decrypts to what it was, the
/// value not in the format is counted and left alone, and a second run has
/// nothing to do.
async fn reencrypt_moves_values(customers: &str) {
    let Some(e) = Encrypted::setup(5, "", "batch_size = 2", customers).await else {
        return;
    };
    let r = crate::common::stdout_json(&run_ok(e.c.lethe().args(["run", "reencrypt", "--json"])));
    assert_eq!(
        (
            r["result"]["reencrypted"].as_u64(),
            r["result"]["unreadable"].as_u64(),
            r["result"]["undecryptable"].as_u64()
        ),
        (Some(5), Some(1), Some(0)),
        "{r}"
    );
    assert_eq!(e.versions().await, [2; 5]);
    let pool = sqlx::PgPool::connect(&e.url).await.unwrap();
    let untouched: String = sqlx::query_scalar("SELECT nik FROM customers WHERE id = 6")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(untouched, "not-encrypted");
    // Reported by its primary key and why, never by its value.
    let row = if customers.contains("PARTITION") {
        "id=6, org_id=1"
    } else {
        "id=6"
    };
    assert_eq!(
        r["result"]["skipped"],
        serde_json::json!([{"table": "customers", "column": "nik", "row": row,
                             "reason": "not in the lethe1 format (no `lethe1:` prefix)"}]),
        "{r}"
    );
    let again =
        crate::common::stdout_json(&run_ok(e.c.lethe().args(["run", "reencrypt", "--json"])));
    assert_eq!(again["result"]["reencrypted"], 0, "{again}");
    let audit = String::from_utf8(run_ok(e.c.lethe().args(["audit", "export"])).stdout).unwrap();
    assert!(audit.contains("\"action\":\"keys.reencrypted\""));
    assert!(
        !audit.contains("3171234567"),
        "evidence never carries values"
    );
}

/// Injects: SIGKILL of the `lethe serve` running `keys.reencrypt` after some
/// batches committed. Must hold: another `serve` rescues the run, which
/// resumes from its checkpoint; every value ends under version 2 exactly
/// once (each decrypts to the original under version 2, so none was
/// encrypted twice), and the evidence counts the values across both attempts.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_reencrypt_resumes_without_encrypting_twice() {
    let runner =
        "lease = \"1s\"\nretry_base = \"100ms\"\nretry_max = \"200ms\"\npoll_interval = \"100ms\"";
    let Some(e) = Encrypted::setup(24, runner, "batch_size = 2\npause_ms = 150", CUSTOMERS).await
    else {
        return;
    };
    let pool = sqlx::PgPool::connect(&e.url).await.unwrap();
    let moved = || async {
        let niks: Vec<String> =
            sqlx::query_scalar("SELECT nik FROM customers WHERE nik LIKE 'lethe1:%'")
                .fetch_all(&pool)
                .await
                .unwrap();
        niks.iter()
            .filter(|n| lethe::cipher::dek_version(n) == Ok(2))
            .count()
    };
    let mut a = crate::common::spawn_serve(e.c.lethe(), &e.c.path().join("serve-a.log"), &[]);
    run_ok(e.c.lethe().args(["run", "reencrypt", "--detach"]));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while moved().await < 6 {
        assert!(
            std::time::Instant::now() < deadline,
            "re-encryption never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    crate::common::signal(&a, libc::SIGKILL);
    a.wait().unwrap();
    let at_kill = moved().await;
    assert!(at_kill < 24, "killed mid-way: {at_kill} moved");

    let mut b = crate::common::spawn_serve(e.c.lethe(), &e.c.path().join("serve-b.log"), &[]);
    let run = crate::common::wait_run_end(|| e.c.lethe(), "reencrypt", 60);
    crate::common::signal(&b, libc::SIGTERM);
    crate::common::wait_exit(&mut b, 30);
    assert_eq!(run["attempts"], 2, "{run}");
    assert_eq!(e.versions().await, [2; 24]);
    // The batches in flight at the kill (`writers`: 2 by default, of 2
    // values each), committed before their checkpoint, are the most the
    // evidence can miss.
    let counted = run["result"]["reencrypted"].as_u64().unwrap();
    assert!((20..=24).contains(&counted), "{run}");
}

/// With the local keyring, a backup taken before an org was shredded
/// restores that org's ciphertexts and even its wrapped keys, but nothing
/// opens them: the key material is gone. The other org's values still open.
#[tokio::test(flavor = "multi_thread")]
async fn a_backup_from_before_a_shred_restores_values_no_key_opens() {
    use age::secrecy::ExposeSecret;
    use base64::Engine;
    use lethe::kms::Kms;
    let identity = age::x25519::Identity::generate();
    let extra = format!(
        "[app]\nsubjects = {{ table = \"users\", id = \"id\", email = \"email\" }}\norgs = {{ table = \"orgs\", id = \"id\", closed_at = \"closed_at\" }}\nkeys = {{ table = \"org_data_keys\" }}\n\n[keys]\nprovider = \"local\"\nshred_after = \"30d\"\n\n[object_store]\nurl = \"file://objects\"\n[backup]\nrecipients = [\"{}\"]\n\n[[data_map]]\ntable = \"customers\"\nclass = \"customer_pii\"\norg = \"org_id\"\nencrypted = [\"nik\"]\n",
        identity.to_public()
    );
    let c = ConfigDir::full(None, None, "", "", &extra);
    let url = format!("sqlite://{}", c.path().join("app.db").display());
    app_exec(
        &url,
        &format!(
            "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT);
             CREATE TABLE orgs (id INTEGER PRIMARY KEY, closed_at TEXT);
             INSERT INTO orgs VALUES (1, NULL), (2, NULL);
             {CREATE_SQLITE};
             CREATE TABLE customers (id INTEGER PRIMARY KEY, org_id INTEGER NOT NULL, nik TEXT);"
        ),
    )
    .await;
    c.job(
        "backup",
        "kind = \"backup.create\"\nschedule = \"0 0 3 * * *\"\nmax_attempts = 1\n",
    );
    run_ok(c.lethe().arg("migrate"));
    run_ok(c.lethe().args(["keys", "rotate", "--json"]));

    let kms = lethe::kms::LocalKms::new(c.path().join("keyring.json"));
    let unwrap = |k: AppKey| {
        let kms = &kms;
        async move {
            let wrapped = base64::engine::general_purpose::STANDARD
                .decode(&k.wrapped_key)
                .unwrap();
            kms.decrypt_dek(&k.kms_key_id, &wrapped).await
        }
    };
    let live = AppDb::connect(&url).await.unwrap();
    for org in [1i64, 2] {
        let key = live
            .app_keys(&table(), Some(&org.to_string()))
            .await
            .unwrap()
            .remove(0);
        let sealed = lethe::cipher::seal(
            &unwrap(key).await.unwrap(),
            1,
            at(org),
            format!("nik-of-org-{org}").as_bytes(),
        )
        .unwrap();
        app_exec(
            &url,
            &format!("INSERT INTO customers VALUES ({org}, {org}, '{sealed}')"),
        )
        .await;
    }
    let backup = crate::common::stdout_json(&run_ok(c.lethe().args(["run", "backup", "--json"])));
    let id = backup["result"]["id"].as_str().unwrap().to_string();

    app_exec(
        &url,
        "UPDATE orgs SET closed_at = datetime('now', '-400 days') WHERE id = 2",
    )
    .await;
    let r = crate::common::stdout_json(&run_ok(c.lethe().args(["keys", "rotate", "--json"])));
    assert_eq!(r["shredded"], serde_json::json!(["2"]), "{r}");

    let restored = c.path().join("restored.db");
    let to = format!("sqlite://{}", restored.display());
    run_ok(
        c.lethe()
            .env("LETHE_AGE_IDENTITY", identity.to_string().expose_secret())
            .args(["backup", "restore", &id, "--json", "--to", &to]),
    );
    let old = AppDb::connect(&to).await.unwrap();
    let pool = sqlx::SqlitePool::connect(&to).await.unwrap();
    for org in [1i64, 2] {
        let key = old
            .app_keys(&table(), Some(&org.to_string()))
            .await
            .unwrap()
            .remove(0);
        assert_eq!(key.state, "active", "the backup predates the shred");
        let stored: String = sqlx::query_scalar("SELECT nik FROM customers WHERE id = $1")
            .bind(org)
            .fetch_one(&pool)
            .await
            .unwrap();
        match (org, unwrap(key).await) {
            (1, Ok(dek)) => assert_eq!(
                lethe::cipher::open(&dek, at(1), &stored).unwrap(),
                b"nik-of-org-1"
            ),
            (2, Err(e)) => assert!(e.to_string().contains("crypto-shredded"), "{e}"),
            (org, other) => panic!("org {org}: {other:?}"),
        }
    }
}

/// The demo encrypts its sample's phone numbers and NIKs under version 1,
/// creates version 2, and its keys.reencrypt moves every value: nothing is
/// left stale, and running it again finds nothing to do.
#[test]
fn the_demo_leaves_no_stale_ciphertexts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let v = stdout_json(&run_ok(
        crate::common::lethe()
            .args(["demo", "--json", "--dir"])
            .arg(&dir),
    ));
    let plain: i64 = {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let url = format!("sqlite://{}", dir.join("app.db").display());
        let counts = rt.block_on(crate::common::app_strings(
            &url,
            "SELECT CAST((SELECT count(*) FROM customers WHERE nik IS NOT NULL) + \
             (SELECT count(*) FROM users WHERE phone IS NOT NULL) AS TEXT) \
             UNION ALL SELECT CAST((SELECT count(*) FROM customers WHERE nik NOT LIKE 'lethe1:%') + \
             (SELECT count(*) FROM users WHERE phone NOT LIKE 'lethe1:%') AS TEXT)",
        ));
        assert_eq!(counts[1], "0", "every stored value is in the format");
        counts[0].parse().unwrap()
    };
    let reencrypt = v["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "keys.reencrypt")
        .unwrap();
    assert_eq!(
        v["keys"]["values_sealed"].as_i64(),
        reencrypt["result"]["reencrypted"].as_i64(),
        "{v}"
    );
    // Every value the app sealed is still stored (the erased user's org was
    // shredded before the demo began: no phone to seal).
    assert!(plain > 2000, "{plain}");
    assert_eq!(v["keys"]["values_sealed"].as_i64(), Some(plain), "{v}");
    assert_eq!(v["keys"]["stale_ciphertexts"], 0, "{v}");

    let config = dir.join("lethe.toml");
    let again = stdout_json(&run_ok(
        crate::common::lethe().arg("--config").arg(&config).args([
            "run",
            "keys.reencrypt",
            "--json",
        ]),
    ));
    assert_eq!(again["status"], "succeeded", "{again}");
    assert_eq!(again["result"]["reencrypted"], 0, "{again}");
    assert_eq!(again["result"]["unreadable"], 0, "{again}");
    let status = stdout_json(&run_ok(
        crate::common::lethe()
            .arg("--config")
            .arg(&config)
            .args(["keys", "status", "--json"]),
    ));
    let orgs = status["orgs"].as_array().unwrap();
    assert_eq!(orgs.len(), 12);
    for o in orgs {
        assert_eq!(o["stale_ciphertexts"], 0, "{o}");
        if o["shredded"] == false {
            assert_eq!(o["active_version"], 2, "{o}");
        }
    }
}

/// A version removed from the key table by hand while values are still under
/// it: rotation stops and says how to fix it, rather than giving the version
/// a new key (which would lose those values for good).
#[tokio::test(flavor = "multi_thread")]
async fn a_key_row_removed_while_values_use_it_stops_rotation() {
    let Some(e) = Encrypted::setup(6, "", "", CUSTOMERS).await else {
        return;
    };
    app_exec(
        &e.url,
        "DELETE FROM org_data_keys WHERE org_id = 1 AND version = 1",
    )
    .await;
    let out = e.c.lethe().args(["keys", "rotate"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("org 1: version 1 is missing from the key table while 3 stored value(s) name it; restore its row from a backup"),
        "{stderr}"
    );
    let org1 = e.db.app_keys(&table(), Some("1")).await.unwrap();
    assert_eq!(
        org1.iter().map(|k| k.version).collect::<Vec<_>>(),
        [2],
        "no new key under version 1"
    );
}

/// A skipped value's row is named by its primary key on SQLite too (a
/// composite one in key order), or by its rowid when the table has none.
#[tokio::test(flavor = "multi_thread")]
async fn rows_are_named_by_primary_key_on_sqlite() {
    use lethe::appdb::RowPos;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    std::fs::write(&path, b"").unwrap();
    let url = format!("sqlite://{}", path.display());
    app_exec(
        &url,
        "CREATE TABLE a (org TEXT, n INTEGER, nik TEXT, PRIMARY KEY (n, org));
         INSERT INTO a VALUES ('x', 7, 'secret');
         CREATE TABLE b (nik TEXT);
         INSERT INTO b VALUES ('secret');",
    )
    .await;
    let db = AppDb::connect(&url).await.unwrap();
    assert_eq!(
        db.row_key("a", &RowPos::Rowid(1)).await.unwrap(),
        "n=7, org=x"
    );
    assert_eq!(db.row_key("b", &RowPos::Rowid(1)).await.unwrap(), "rowid 1");
}
