//! A reference application (`tests/reference_app/app.py`: Python's
//! `cryptography` AES-GCM, and boto3 KMS against moto or Lethe's local
//! keyring) reads and writes encrypted PII through the key table Lethe keeps,
//! exactly as a real application would: before rotation, after a KEK rotation
//! with re-wrap and a new DEK version, after `keys.reencrypt`, and after its
//! org is crypto-shredded. Run twice: on SQLite with the local keyring and on
//! PostgreSQL with moto's KMS. Lethe empties a shredded org's wrapped keys in
//! the table, so its values stop decrypting whatever the KMS does. With the
//! local keyring the test also puts the old wrapped keys back, as restoring a
//! backup would, and they still open nothing: the KEK material is gone. moto
//! does not refuse Decrypt for a key pending deletion, so on moto the test
//! relies on the table alone.

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{
    app_exec, app_strings, fresh_pg_db, run_ok, server_env, stdout_json, ConfigDir,
};

const NIKS: [(i64, i64, &str); 4] = [
    (1, 1, "3171234567890001"),
    (2, 1, "3171234567890002"),
    (3, 2, "3273012345670003"),
    (4, 2, "3273012345670004"),
];

/// Where the application keeps its data and keys.
struct Setup {
    python: String,
    /// The application database, as both Lethe and app.py take it.
    url: String,
    /// `Some(moto)`: AWS KMS at that endpoint; `None`: the local keyring.
    moto: Option<String>,
}

impl Setup {
    fn pg(&self) -> bool {
        self.url.starts_with("postgres")
    }
}

fn app(c: &ConfigDir, s: &Setup, command: &str) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/reference_app/app.py");
    let mut cmd = Command::new(&s.python);
    cmd.arg(script).arg(command).arg(&s.url);
    match &s.moto {
        Some(moto) => cmd
            .env("AWS_ENDPOINT_URL", moto)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1"),
        None => cmd.env("LETHE_KEYRING", c.path().join("keyring.json")),
    };
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "app.py {command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if command == "read" {
        stdout_json(&out)
    } else {
        Value::Null
    }
}

fn plaintexts(shredded_org: Option<i64>) -> Value {
    let map: serde_json::Map<String, Value> = NIKS
        .iter()
        .map(|(id, org, nik)| {
            let v = if Some(*org) == shredded_org {
                Value::Null
            } else {
                json!(nik)
            };
            (id.to_string(), v)
        })
        .collect();
    Value::Object(map)
}

async fn stored_versions(s: &Setup) -> Vec<u32> {
    app_strings(&s.url, "SELECT nik FROM customers ORDER BY id")
        .await
        .iter()
        .map(|n| lethe::cipher::dek_version(n).unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

/// Ada's export, through `dsr.process`: her customers' NIKs as the archive
/// carries them, and the archive's README.
fn export_niks(c: &ConfigDir, identity: &age::x25519::Identity) -> (Vec<(i64, Value)>, String) {
    let v = stdout_json(&run_ok(c.lethe().args([
        "dsr",
        "submit",
        "--kind",
        "export",
        "--subject",
        "ada@x.example",
        "--json",
    ])));
    let run = stdout_json(&run_ok(c.lethe_aws().args(["run", "export", "--json"])));
    assert_eq!(run["status"], "succeeded", "{run}");
    let shown = stdout_json(&run_ok(c.lethe().args([
        "dsr",
        "show",
        &v["id"].to_string(),
        "--json",
    ])));
    let object = c
        .path()
        .join("objects")
        .join(shown["result"]["object"].as_str().unwrap());
    let files = crate::common::archive_texts(&std::fs::read(object).unwrap(), identity);
    let rows: Vec<Value> = serde_json::from_str(&files["customers.json"]).unwrap();
    let niks = rows
        .iter()
        .map(|r| (r["id"].as_i64().unwrap(), r["nik"].clone()))
        .collect();
    (niks, files["README.txt"].clone())
}

/// An org's stale ciphertexts and its (version, state, values under it).
type OrgKeys = (u64, Vec<(i64, String, u64)>);

fn key_status(c: &ConfigDir) -> Vec<OrgKeys> {
    let v = stdout_json(&run_ok(c.lethe_aws().args(["keys", "status", "--json"])));
    v["orgs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let versions = o["versions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| {
                    let state = k["state"].as_str().unwrap().to_string();
                    (
                        k["version"].as_i64().unwrap(),
                        state,
                        k["ciphertexts"].as_u64().unwrap(),
                    )
                })
                .collect();
            (o["stale_ciphertexts"].as_u64().unwrap(), versions)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reference_application_on_sqlite_with_the_local_keyring() {
    let Some(python) = server_env("LETHE_TEST_PYTHON") else {
        return;
    };
    reference_application(python, None, None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reference_application_on_postgres_with_aws_kms() {
    let (Some(moto), Some(python), Some(url)) = (
        server_env("LETHE_TEST_MOTO_URL"),
        server_env("LETHE_TEST_PYTHON"),
        fresh_pg_db().await,
    ) else {
        return;
    };
    reference_application(python, Some(url), Some(moto)).await;
}

/// `pg_url`: None → SQLite in the config folder; `moto`: None → the local keyring.
async fn reference_application(python: String, pg_url: Option<String>, moto: Option<String>) {
    let identity = age::x25519::Identity::generate();
    let provider = match &moto {
        Some(moto) => {
            format!("provider = \"aws\"\nkms_endpoint = \"{moto}\"\nregion = \"us-east-1\"")
        }
        None => "provider = \"local\"\nkeyring_file = \"keyring.json\"".to_string(),
    };
    let extra = format!(
        "[app]\nsubjects = {{ table = \"users\", id = \"id\", email = \"email\" }}\norgs = {{ table = \"orgs\", id = \"id\", closed_at = \"closed_at\" }}\nkeys = {{ table = \"org_data_keys\" }}\n\n[keys]\n{provider}\ndek_rotation = \"1000d\"\nkek_rotation = \"4s\"\nshred_after = \"30d\"\n\n[object_store]\nurl = \"file://objects\"\n[backup]\nrecipients = [\"{}\"]\n\n[[data_map]]\ntable = \"customers\"\nclass = \"customer_pii\"\norg = \"org_id\"\nsubject = \"user_id\"\nexport = true\nencrypted = [\"nik\"]\nerasure = \"anonymize\"\nanonymize = {{ nik = \"hmac\" }}\n",
        identity.to_public()
    );
    let c = ConfigDir::full(None, pg_url.as_deref(), "", "", &extra);
    let s = Setup {
        python,
        url: pg_url.unwrap_or_else(|| format!("sqlite://{}", c.path().join("app.db").display())),
        moto,
    };
    let (closed_at, created_at) = if s.pg() {
        ("timestamptz", "timestamptz")
    } else {
        ("TEXT", "TEXT")
    };
    app_exec(
        &s.url,
        &format!(
            "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT);
         CREATE TABLE orgs (id INTEGER PRIMARY KEY, closed_at {closed_at});
         INSERT INTO orgs VALUES (1, NULL), (2, NULL);
         CREATE TABLE org_data_keys (org_id INTEGER NOT NULL, version INTEGER NOT NULL, wrapped_key TEXT NOT NULL,
             kms_key_id TEXT NOT NULL, state TEXT NOT NULL, created_at {created_at} NOT NULL, PRIMARY KEY (org_id, version));
         INSERT INTO users VALUES (1, 'ada@x.example');
         CREATE TABLE customers (id INTEGER PRIMARY KEY, org_id INTEGER NOT NULL, nik TEXT NOT NULL, user_id INTEGER);"
        ),
    )
    .await;
    for (id, org, nik) in NIKS {
        app_exec(
            &s.url,
            &format!("INSERT INTO customers VALUES ({id}, {org}, '{nik}', {id} % 2)"),
        )
        .await;
    }
    c.job(
        "backup",
        "kind = \"backup.create\"\nschedule = \"0 0 3 * * *\"\nmax_attempts = 1\n",
    );
    c.job(
        "export",
        "kind = \"dsr.process\"\nschedule = \"0 0 3 * * *\"\nmax_attempts = 1\n",
    );
    c.job(
        "reencrypt",
        "kind = \"keys.reencrypt\"\nschedule = \"0 0 3 * * *\"\nmax_attempts = 1\n",
    );
    run_ok(c.lethe().arg("migrate"));
    let check = run_ok(c.lethe().arg("check"));
    assert!(check.status.success());

    // Keys created: the application encrypts under version 1 and reads everything back.
    run_ok(c.lethe_aws().args(["keys", "rotate", "--json"]));
    app(&c, &s, "write");
    assert_eq!(stored_versions(&s).await, [1, 1, 1, 1]);
    assert_eq!(app(&c, &s, "read"), plaintexts(None));

    // KEK rotated (its period passed), version 1 re-wrapped in place,
    // version 2 added (`--new-dek`): the old values still read, and a
    // rewrite moves them to version 2.
    std::thread::sleep(Duration::from_millis(4100));
    let r = stdout_json(&run_ok(c.lethe_aws().args([
        "keys",
        "rotate",
        "--new-dek",
        "--json",
    ])));
    assert_eq!(
        (r["keks_rotated"].as_u64(), r["deks_created"].as_u64()),
        (Some(2), Some(2)),
        "{r}"
    );
    assert_eq!(app(&c, &s, "read"), plaintexts(None));
    // Every value is under version 1 while version 2 is the newest: all stale, v1 still in use.
    let v = |rows: &[(i64, &str, u64)]| {
        rows.iter()
            .map(|(a, b, c)| (*a, b.to_string(), *c))
            .collect::<Vec<_>>()
    };
    let both = |stale: u64, rows: &[(i64, &str, u64)]| vec![(stale, v(rows)), (stale, v(rows))];
    assert_eq!(
        key_status(&c),
        both(2, &[(1, "active", 2), (2, "active", 0)])
    );
    // keys.reencrypt moves every value to version 2; a second run finds nothing to do.
    let r = stdout_json(&run_ok(c.lethe_aws().args(["run", "reencrypt", "--json"])));
    assert_eq!(r["result"]["reencrypted"], 4, "{r}");
    assert_eq!(
        (
            r["result"]["unreadable"].as_u64(),
            r["result"]["undecryptable"].as_u64()
        ),
        (Some(0), Some(0)),
        "{r}"
    );
    let r = stdout_json(&run_ok(c.lethe_aws().args(["run", "reencrypt", "--json"])));
    assert_eq!(r["result"]["reencrypted"], 0, "{r}");
    assert_eq!(stored_versions(&s).await, [2, 2, 2, 2]);
    assert_eq!(app(&c, &s, "read"), plaintexts(None));
    // The application's own rewrite (under the newest version) changes nothing either.
    app(&c, &s, "write");
    assert_eq!(stored_versions(&s).await, [2, 2, 2, 2]);
    assert_eq!(app(&c, &s, "read"), plaintexts(None));
    assert_eq!(
        key_status(&c),
        both(0, &[(1, "active", 0), (2, "active", 2)])
    );
    // Nothing is under version 1 any more: the next rotation retires it.
    let r = stdout_json(&run_ok(c.lethe_aws().args(["keys", "rotate", "--json"])));
    assert_eq!(r["details"][0]["app_keys_retired"], 1, "{r}");
    assert_eq!(
        key_status(&c),
        both(0, &[(1, "retired", 0), (2, "active", 2)])
    );

    // A subject's export carries her values in plaintext.
    let (niks, readme) = export_niks(&c, &identity);
    assert_eq!(
        niks,
        [(1, json!(NIKS[0].2)), (3, json!(NIKS[2].2))],
        "{readme}"
    );
    assert!(!readme.contains("could not be decrypted"), "{readme}");

    // A backup taken while org 2's values are in it: the shred's evidence names it.
    let backup = stdout_json(&run_ok(c.lethe().args(["run", "backup", "--json"])));
    let backup_id = backup["result"]["id"].as_str().unwrap().to_string();

    // Org 2 closed long ago: shredded; its values no longer decrypt, org 1's do.
    let kept_keys = app_strings(
        &s.url,
        "SELECT wrapped_key FROM org_data_keys WHERE org_id = 2 ORDER BY version",
    )
    .await;
    app_exec(
        &s.url,
        if s.pg() {
            "UPDATE orgs SET closed_at = now() - interval '400 days' WHERE id = 2"
        } else {
            "UPDATE orgs SET closed_at = datetime('now', '-400 days') WHERE id = 2"
        },
    )
    .await;
    let r = stdout_json(&run_ok(c.lethe_aws().args(["keys", "rotate", "--json"])));
    assert_eq!(r["shredded"], json!(["2"]), "{r}");
    assert_eq!(app(&c, &s, "read"), plaintexts(Some(2)));
    if s.moto.is_none() {
        // The wrapped keys back in the table, as a restored backup would put
        // them: the keyring no longer holds the KEK that opens them.
        for (i, k) in kept_keys.iter().enumerate() {
            app_exec(
                &s.url,
                &format!(
                    "UPDATE org_data_keys SET wrapped_key = '{k}', state = 'active' WHERE org_id = 2 AND version = {}",
                    i + 1
                ),
            )
            .await;
        }
        assert_eq!(app(&c, &s, "read"), plaintexts(Some(2)));
    }
    // The export says so instead of carrying ciphertext nobody can read.
    let (niks, readme) = export_niks(&c, &identity);
    assert_eq!(niks, [(1, json!(NIKS[0].2)), (3, Value::Null)], "{readme}");
    assert!(
        readme.contains("1 encrypted value(s) could not be decrypted"),
        "{readme}"
    );
    let audit = String::from_utf8(run_ok(c.lethe().args(["audit", "export"])).stdout).unwrap();
    let shredded: Value = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|e| e["action"] == "keys.shredded")
        .unwrap();
    assert_eq!(shredded["target"], "org:2");
    assert_eq!(
        shredded["details"]["backups_now_unreadable_for_org"],
        json!([backup_id]),
        "{shredded}"
    );

    // Ada erased: her NIKs become her pseudonym, sealed under each org's
    // newest key, so the application reads a pseudonym where the NIK was (and
    // in shredded org 2 the pseudonym in plaintext, which nothing reads);
    // everyone else's values are untouched.
    let v = stdout_json(&run_ok(c.lethe().args([
        "dsr",
        "submit",
        "--kind",
        "erasure",
        "--subject",
        "ada@x.example",
        "--json",
    ])));
    let run = stdout_json(&run_ok(
        c.lethe_aws()
            .env("LETHE_PSEUDONYM_KEY", "reference-app-pseudonym-key-0123")
            .args(["run", "export", "--json"]),
    ));
    assert_eq!(run["status"], "succeeded", "{run}");
    let shown = stdout_json(&run_ok(c.lethe().args([
        "dsr",
        "show",
        &v["id"].to_string(),
        "--json",
    ])));
    assert_eq!(shown["state"], "completed", "{shown}");
    let read = app(&c, &s, "read");
    let pseudonym = read["1"].as_str().unwrap_or_default().to_string();
    assert!(pseudonym.starts_with("erased-"), "{read}");
    let mut expected = plaintexts(Some(2));
    expected["1"] = json!(pseudonym);
    expected["3"] = json!(pseudonym);
    assert_eq!(read, expected);
    let stored = app_strings(&s.url, "SELECT nik FROM customers WHERE id = 1").await;
    assert_eq!(
        lethe::cipher::dek_version(&stored[0]).ok(),
        Some(2),
        "sealed under org 1's newest key"
    );
    let stored = app_strings(&s.url, "SELECT nik FROM customers WHERE id = 3").await;
    assert_eq!(stored, [pseudonym], "org 2 has no key any more");
}
