//! The application's key table (`[app.keys]`) on both databases: versions
//! added, re-wrapped, retired and destroyed exactly as asked, and `lethe
//! check` naming a key-table column the schema lacks.

use lethe::appdb::{AppDb, AppKey};
use lethe::config::KeysTable;

use crate::common::{app_exec, run_ok, ConfigDir};

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

/// `keys.reencrypt` on PostgreSQL with the local keyring: values written
/// under version 1 (sealed here with the DEK the keyring unwraps, as an
/// application would) move to version 2 in batches of two, still decrypt to
/// what they were, a value not in the format is counted and left alone, and
/// a second run has nothing to do.
#[tokio::test(flavor = "multi_thread")]
async fn reencrypt_moves_postgres_values_to_the_newest_key() {
    use lethe::kms::Kms;
    let Some(url) = crate::common::fresh_pg_db().await else {
        return;
    };
    let extra = "[app]\nsubjects = { table = \"users\", id = \"id\", email = \"email\" }\norgs = { table = \"orgs\", id = \"id\", closed_at = \"closed_at\" }\nkeys = { table = \"org_data_keys\" }\n\n[keys]\nprovider = \"local\"\ndek_rotation = \"4s\"\nkek_rotation = \"1000d\"\n\n[[data_map]]\ntable = \"customers\"\nclass = \"customer_pii\"\norg = \"org_id\"\nencrypted = [\"nik\"]\n";
    let c = ConfigDir::full(None, Some(&url), "", "", extra);
    app_exec(
        &url,
        &format!(
            "CREATE TABLE users (id BIGINT PRIMARY KEY, email TEXT);
         CREATE TABLE orgs (id BIGINT PRIMARY KEY, closed_at TIMESTAMPTZ);
         INSERT INTO orgs VALUES (1, NULL), (2, NULL);
         {CREATE_PG};
         CREATE TABLE customers (id BIGINT PRIMARY KEY, org_id BIGINT NOT NULL, nik VARCHAR(200));"
        ),
    )
    .await;
    c.job("reencrypt", "kind = \"keys.reencrypt\"\nschedule = \"0 0 3 * * *\"\nmax_attempts = 1\n[params]\nbatch_size = 2\n");
    run_ok(c.lethe().arg("migrate"));
    run_ok(c.lethe().args(["keys", "rotate", "--json"]));

    let db = AppDb::connect(&url).await.unwrap();
    let kms = lethe::kms::LocalKms::new(c.path().join("keyring.json"));
    let dek = |k: AppKey| {
        let kms = &kms;
        async move {
            use base64::Engine;
            let wrapped = base64::engine::general_purpose::STANDARD
                .decode(&k.wrapped_key)
                .unwrap();
            kms.decrypt_dek(&k.kms_key_id, &wrapped).await.unwrap()
        }
    };
    let plain: Vec<(i64, i64, String)> = (1..=5)
        .map(|i| (i, 1 + i % 2, format!("31712345678900{i:02}")))
        .collect();
    for (id, org, nik) in &plain {
        let key = db
            .app_keys(&table(), Some(&org.to_string()))
            .await
            .unwrap()
            .remove(0);
        let at = lethe::cipher::Binding {
            table: "customers",
            column: "nik",
            org: &org.to_string(),
        };
        let sealed = lethe::cipher::seal(&dek(key).await, 1, at, nik.as_bytes()).unwrap();
        app_exec(
            &url,
            &format!("INSERT INTO customers VALUES ({id}, {org}, '{sealed}')"),
        )
        .await;
    }
    app_exec(
        &url,
        "INSERT INTO customers VALUES (6, 1, 'not-encrypted'), (7, 2, NULL)",
    )
    .await;

    std::thread::sleep(std::time::Duration::from_millis(4100));
    run_ok(c.lethe().args(["keys", "rotate", "--json"]));
    let r = crate::common::stdout_json(&run_ok(c.lethe().args(["run", "reencrypt", "--json"])));
    assert_eq!(
        (
            r["result"]["reencrypted"].as_u64(),
            r["result"]["unreadable"].as_u64(),
            r["result"]["undecryptable"].as_u64()
        ),
        (Some(5), Some(1), Some(0)),
        "{r}"
    );
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    for (id, org, nik) in &plain {
        let stored: String = sqlx::query_scalar("SELECT nik FROM customers WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(lethe::cipher::dek_version(&stored), Ok(2), "row {id}");
        let v2 = db
            .app_keys(&table(), Some(&org.to_string()))
            .await
            .unwrap()
            .into_iter()
            .find(|k| k.version == 2)
            .unwrap();
        let at = lethe::cipher::Binding {
            table: "customers",
            column: "nik",
            org: &org.to_string(),
        };
        assert_eq!(
            lethe::cipher::open(&dek(v2).await, at, &stored).unwrap(),
            nik.as_bytes()
        );
    }
    let untouched: String = sqlx::query_scalar("SELECT nik FROM customers WHERE id = 6")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(untouched, "not-encrypted");
    let again = crate::common::stdout_json(&run_ok(c.lethe().args(["run", "reencrypt", "--json"])));
    assert_eq!(again["result"]["reencrypted"], 0, "{again}");
    let audit = String::from_utf8(run_ok(c.lethe().args(["audit", "export"])).stdout).unwrap();
    assert!(audit.contains("\"action\":\"keys.reencrypted\""));
    assert!(
        !audit.contains("3171234567890"),
        "evidence never carries values"
    );
}
