//! Files referenced by rows (`objects = [...]` in the data map) go when a
//! purge deletes their rows: every version and delete marker on a versioned
//! S3 bucket (moto, counted with ListObjectVersions), the file on a folder
//! store; never a file a remaining row still references, never one under a
//! legal hold, never a path outside the folder.

use aws_sdk_s3::primitives::ByteStream;
use serde_json::{json, Value};

use crate::common::{app_exec, fresh_pg_db, run_ok, s3_client, server_env, stdout_json, ConfigDir};

/// documents: (id, org, key, days old). 1–3 expired in org 1, 4 expired in
/// held org 2, 5 fresh; 6 is fresh and shares expired 2's file, which must stay.
const DOCS: [(i64, i64, &str, i64); 6] = [
    (1, 1, "org1/a.pdf", 200),
    (2, 1, "org1/shared.pdf", 200),
    (3, 1, "org1/c.pdf", 150),
    (4, 2, "org2/held.pdf", 200),
    (5, 1, "org1/fresh.pdf", 3),
    (6, 1, "org1/shared.pdf", 3),
];

/// Writes `body` at `key` under a folder store's root; returns the file's path.
fn put_file(root: &std::path::Path, key: &str, body: impl AsRef<[u8]>) -> std::path::PathBuf {
    let p = root.join(key);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, body).unwrap();
    p
}

fn config(store: &str) -> String {
    format!(
        "[app]\nsubjects = {{ table = \"users\", id = \"id\", email = \"email\" }}\n\
         orgs = {{ table = \"orgs\", id = \"id\", closed_at = \"closed_at\" }}\n\n\
         {store}\n\n\
         [[data_map]]\ntable = \"documents\"\nclass = \"statements\"\ntimestamp = \"created_at\"\n\
         org = \"org_id\"\nretention = \"90d\"\nobjects = [{{ column = \"storage_key\", store = \"docs\" }}]\n"
    )
}

async fn seed(url: &str, pg: bool) {
    let ts = if pg { "timestamptz" } else { "TEXT" };
    app_exec(
        url,
        &format!(
            "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT);
             CREATE TABLE orgs (id INTEGER PRIMARY KEY, closed_at {ts});
             INSERT INTO orgs VALUES (1, NULL), (2, NULL);
             CREATE TABLE documents (id INTEGER PRIMARY KEY, org_id INTEGER NOT NULL,
                 storage_key TEXT, created_at {ts} NOT NULL);"
        ),
    )
    .await;
    for (id, org, key, days) in DOCS {
        let at = if pg {
            format!("now() - interval '{days} days'")
        } else {
            format!("datetime('now', '-{days} days')")
        };
        app_exec(
            url,
            &format!("INSERT INTO documents VALUES ({id}, {org}, '{key}', {at})"),
        )
        .await;
    }
}

/// The job file `name`, the store migrated, and org 2 under a legal hold:
/// the setup the tests here share.
fn with_job_and_hold(c: &ConfigDir, name: &str, job: &str) {
    c.job(name, job);
    run_ok(c.lethe().arg("migrate"));
    run_ok(
        c.lethe()
            .args(["hold", "add", "--org", "2", "--reason", "litigation"]),
    );
}

fn purge(c: &ConfigDir) -> Value {
    with_job_and_hold(c, "purge", "kind = \"retention.purge\"\nschedule = \"0 0 3 * * *\"\nmax_attempts = 1\n[params]\nbatch_size = 2\n");
    let r = stdout_json(&run_ok(
        c.lethe()
            .env("DOCS_KEY_ID", "testing")
            .env("DOCS_SECRET", "testing")
            .args(["run", "purge", "--json"]),
    ));
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["result"]["deleted"], 3, "{r}");
    r
}

#[tokio::test(flavor = "multi_thread")]
async fn a_purge_deletes_every_version_of_its_rows_files_on_s3() {
    let (Some(moto), Some(url)) = (server_env("LETHE_TEST_MOTO_URL"), fresh_pg_db().await) else {
        return;
    };
    let s3 = s3_client(&moto);
    let bucket = crate::common::versioned_bucket(&s3, "app").await;
    // Two versions of every file, and a delete marker over a third version of a.pdf.
    let mut keys: Vec<&str> = DOCS.iter().map(|d| d.2).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        for body in ["v1 personal data", "v2 personal data!"] {
            s3.put_object()
                .bucket(&bucket)
                .key(format!("app/{key}"))
                .body(ByteStream::from_static(body.as_bytes()))
                .send()
                .await
                .unwrap();
        }
    }
    s3.delete_object()
        .bucket(&bucket)
        .key("app/org1/a.pdf")
        .send()
        .await
        .unwrap();
    // A longer key sharing a.pdf's prefix is not a.pdf's version.
    s3.put_object()
        .bucket(&bucket)
        .key("app/org1/a.pdf.thumbnail")
        .body(ByteStream::from_static(b"thumb"))
        .send()
        .await
        .unwrap();
    let store = format!(
        "[object_stores.docs]\nurl = \"s3://{bucket}/app\"\nendpoint = \"{moto}\"\nregion = \"us-east-1\"\n\
         path_style = true\naccess_key_id_env = \"DOCS_KEY_ID\"\nsecret_access_key_env = \"DOCS_SECRET\"\n"
    );
    let c = ConfigDir::full(None, Some(&url), "", "", &config(&store));
    seed(&url, true).await;
    run_ok(c.lethe().arg("migrate"));
    run_ok(c.lethe().arg("check"));
    let r = purge(&c);
    // a.pdf: 2 versions + 1 marker; c.pdf: 2 versions; shared.pdf stays (row 6).
    let org1 = &r["result"]["objects"]["statements"]["1"];
    assert_eq!(
        (&org1["objects"], &org1["versions"]),
        (&json!(2), &json!(5)),
        "{r}"
    );
    assert_eq!(org1["bytes"], 2 * (16 + 17), "{r}");

    let listed = s3
        .list_object_versions()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    let mut left: Vec<String> = listed
        .versions()
        .iter()
        .filter_map(|v| v.key().map(str::to_string))
        .chain(
            listed
                .delete_markers()
                .iter()
                .filter_map(|m| m.key().map(str::to_string)),
        )
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            "app/org1/a.pdf.thumbnail",
            "app/org1/fresh.pdf",
            "app/org1/fresh.pdf",
            "app/org1/shared.pdf",
            "app/org1/shared.pdf",
            "app/org2/held.pdf",
            "app/org2/held.pdf",
        ]
    );
    // Evidence counts per class and org, and never a key.
    let audit = String::from_utf8(run_ok(c.lethe().args(["audit", "export"])).stdout).unwrap();
    assert!(
        audit.contains("\"action\":\"retention.objects_deleted\""),
        "{audit}"
    );
    for (_, _, key, _) in DOCS {
        assert!(!audit.contains(key), "evidence names no key: {key}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_purge_deletes_its_rows_files_in_a_folder_store_and_nothing_outside() {
    let c = ConfigDir::full(
        None,
        None,
        "",
        "",
        &config("[object_stores.docs]\nurl = \"file://appfiles\"\n"),
    );
    let url = format!("sqlite://{}", c.path().join("app.db").display());
    seed(&url, false).await;
    // A hostile key pointing outside the store's folder, on an expired row.
    app_exec(
        &url,
        "INSERT INTO documents VALUES (7, 1, '../outside.txt', datetime('now', '-200 days'))",
    )
    .await;
    let root = c.path().join("appfiles");
    for (_, _, key, _) in DOCS {
        put_file(&root, key, "personal data");
    }
    std::fs::write(c.path().join("outside.txt"), "not the store's").unwrap();
    with_job_and_hold(&c, "purge", "kind = \"retention.purge\"\nschedule = \"0 0 3 * * *\"\nmax_attempts = 1\n[params]\nbatch_size = 2\n");
    let r = stdout_json(&run_ok(c.lethe().args(["run", "purge", "--json"])));
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["result"]["deleted"], 4, "{r}");
    let org1 = &r["result"]["objects"]["statements"]["1"];
    assert_eq!(
        (&org1["objects"], &org1["bytes"], &org1["refused_keys"]),
        (&json!(2), &json!(26), &json!(1)),
        "{r}"
    );
    let exists = |k: &str| root.join(k).exists();
    assert!(!exists("org1/a.pdf") && !exists("org1/c.pdf"));
    assert!(exists("org1/shared.pdf") && exists("org1/fresh.pdf") && exists("org2/held.pdf"));
    assert!(
        c.path().join("outside.txt").exists(),
        "nothing outside the store"
    );
}

/// Injects: an abort of the `lethe serve` running the purge right after a
/// batch's rows were deleted, before their files were.
/// Must hold: another `serve` rescues the run, which first deletes the files
/// the checkpoint names that no row references any more; afterwards no file
/// lacks its row and no row lacks its file, and the counts cover both attempts.
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_between_rows_and_files_leaves_nothing_orphaned_after_the_rescue() {
    let runner =
        "lease = \"1s\"\nretry_base = \"100ms\"\nretry_max = \"300ms\"\npoll_interval = \"100ms\"";
    let c = ConfigDir::full(
        None,
        None,
        runner,
        "",
        &config("[object_stores.docs]\nurl = \"file://appfiles\"\n"),
    );
    let url = format!("sqlite://{}", c.path().join("app.db").display());
    seed(&url, false).await;
    let root = c.path().join("appfiles");
    for (_, _, key, _) in DOCS {
        put_file(&root, key, "personal data");
    }
    with_job_and_hold(&c, "purge", "kind = \"retention.purge\"\nschedule = \"0 0 3 * * *\"\nmax_attempts = 3\n[params]\nbatch_size = 2\n");
    run_ok(c.lethe().args(["run", "purge", "--detach"]));
    let mut a = crate::common::spawn_serve(
        {
            let mut cmd = c.lethe();
            cmd.env("LETHE_TEST_CRASH_AT", "files_pending");
            cmd
        },
        &c.path().join("serve-a.log"),
        &[],
    );
    crate::common::wait_exit(&mut a, 30);
    let ids =
        crate::common::app_strings(&url, "SELECT CAST(id AS TEXT) FROM documents ORDER BY id")
            .await;
    assert_eq!(ids, ["3", "4", "5", "6"], "the first batch's rows went");
    assert!(root.join("org1/a.pdf").exists(), "its file not yet");

    let mut b = crate::common::spawn_serve(c.lethe(), &c.path().join("serve-b.log"), &[]);
    let run = crate::common::wait_run_end(|| c.lethe(), "purge", 60);
    crate::common::signal(&b, libc::SIGTERM);
    crate::common::wait_exit(&mut b, 30);
    assert_eq!(
        (&run["state"], &run["attempts"]),
        (&json!("succeeded"), &json!(2)),
        "{run}"
    );
    let keys =
        crate::common::app_strings(&url, "SELECT storage_key FROM documents ORDER BY id").await;
    let mut files: Vec<String> = [
        "org1/a.pdf",
        "org1/c.pdf",
        "org1/shared.pdf",
        "org1/fresh.pdf",
        "org2/held.pdf",
    ]
    .into_iter()
    .filter(|k| root.join(k).exists())
    .map(str::to_string)
    .collect();
    files.sort();
    let mut referenced = keys.clone();
    referenced.sort();
    referenced.dedup();
    assert_eq!(
        files, referenced,
        "every file has its row and every row its file"
    );
    assert_eq!(
        run["result"]["objects"]["statements"]["1"]["objects"], 2,
        "{run}"
    );
}

/// An erasure deletes the subject's files with their rows (a folder store),
/// keeps those of a held org's rows and of other subjects, and its evidence
/// counts them without naming a key.
#[tokio::test(flavor = "multi_thread")]
async fn an_erasure_deletes_the_subjects_files() {
    let c = ConfigDir::full(
        None,
        None,
        "",
        "",
        "[app]\nsubjects = { table = \"users\", id = \"id\", email = \"email\" }\n\n\
         [object_stores.docs]\nurl = \"file://appfiles\"\n\n\
         [[data_map]]\ntable = \"documents\"\nclass = \"statements\"\norg = \"org_id\"\nsubject = \"owner\"\n\
         erasure = \"delete\"\nobjects = [{ column = \"storage_key\", store = \"docs\" }]\n",
    );
    let url = format!("sqlite://{}", c.path().join("app.db").display());
    app_exec(
        &url,
        "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT);
         INSERT INTO users VALUES (1, 'ada@x.example'), (2, 'bob@x.example');
         CREATE TABLE documents (id INTEGER PRIMARY KEY, org_id INTEGER, owner INTEGER, storage_key TEXT);
         INSERT INTO documents VALUES (1, 1, 1, 'ada/id-card.jpg'), (2, 1, 1, 'ada/statement.pdf'),
             (3, 2, 1, 'ada/held.pdf'), (4, 1, 2, 'bob/statement.pdf'), (5, 1, 1, NULL);",
    )
    .await;
    let root = c.path().join("appfiles");
    for key in [
        "ada/id-card.jpg",
        "ada/statement.pdf",
        "ada/held.pdf",
        "bob/statement.pdf",
    ] {
        put_file(&root, key, "personal data");
    }
    with_job_and_hold(
        &c,
        "dsr",
        "kind = \"dsr.process\"\nschedule = \"0 0 3 * * *\"\nmax_attempts = 1\n",
    );
    run_ok(c.lethe().args([
        "dsr",
        "submit",
        "--kind",
        "erasure",
        "--subject",
        "ada@x.example",
    ]));
    let run = stdout_json(&run_ok(
        c.lethe()
            .env("LETHE_PSEUDONYM_KEY", "objects-test-pseudonym-key-01234")
            .args(["run", "dsr", "--json"]),
    ));
    assert_eq!(run["status"], "succeeded", "{run}");
    let exists = |k: &str| root.join(k).exists();
    assert!(
        !exists("ada/id-card.jpg") && !exists("ada/statement.pdf"),
        "her files went"
    );
    assert!(exists("ada/held.pdf"), "a held org's row and file stay");
    assert!(exists("bob/statement.pdf"), "someone else's file stays");
    let audit = String::from_utf8(run_ok(c.lethe().args(["audit", "export"])).stdout).unwrap();
    let erased: Value = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|e| e["action"] == "dsr.erased")
        .unwrap();
    assert_eq!(erased["details"]["files"]["objects"], 2, "{erased}");
    assert_eq!(erased["details"]["files"]["bytes"], 26, "{erased}");
    assert!(!audit.contains("ada/"), "evidence names no key");
}

/// A subject's export carries their files under `files/<table>/<key>`, read
/// back byte for byte; a file past `dsr.export_max_bytes` is left out and
/// the README names it and says why.
#[tokio::test(flavor = "multi_thread")]
async fn an_export_carries_the_subjects_files_within_its_size_limit() {
    let identity = age::x25519::Identity::generate();
    let c = ConfigDir::full(
        None,
        None,
        "",
        "",
        &format!(
            "[app]\nsubjects = {{ table = \"users\", id = \"id\", email = \"email\" }}\n\n\
             [object_store]\nurl = \"file://exports\"\n[backup]\nrecipients = [\"{}\"]\n\
             [dsr]\nexport_max_bytes = 100\n\n\
             [object_stores.docs]\nurl = \"file://appfiles\"\n\n\
             [[data_map]]\ntable = \"documents\"\nclass = \"statements\"\nsubject = \"owner\"\nexport = true\n\
             objects = [{{ column = \"storage_key\", store = \"docs\" }}]\n",
            identity.to_public()
        ),
    );
    let url = format!("sqlite://{}", c.path().join("app.db").display());
    app_exec(
        &url,
        "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT);
         INSERT INTO users VALUES (1, 'ada@x.example'), (2, 'bob@x.example');
         CREATE TABLE documents (id INTEGER PRIMARY KEY, owner INTEGER, storage_key TEXT);
         INSERT INTO documents VALUES (1, 1, 'ada/id-card.jpg'), (2, 1, 'ada/scan.pdf'),
             (3, 2, 'bob/statement.pdf'), (4, 1, 'ada/missing.pdf');",
    )
    .await;
    let root = c.path().join("appfiles");
    let files = [
        ("ada/id-card.jpg", vec![7u8; 60]),
        ("ada/scan.pdf", vec![9u8; 70]),
        ("bob/statement.pdf", vec![1u8; 10]),
    ];
    for (key, body) in &files {
        put_file(&root, key, body);
    }
    c.job(
        "dsr",
        "kind = \"dsr.process\"\nschedule = \"0 0 3 * * *\"\nmax_attempts = 1\n",
    );
    run_ok(c.lethe().arg("migrate"));
    let v = stdout_json(&run_ok(c.lethe().args([
        "dsr",
        "submit",
        "--kind",
        "export",
        "--subject",
        "ada@x.example",
        "--json",
    ])));
    let run = stdout_json(&run_ok(c.lethe().args(["run", "dsr", "--json"])));
    assert_eq!(run["status"], "succeeded", "{run}");
    let shown = stdout_json(&run_ok(c.lethe().args([
        "dsr",
        "show",
        &v["id"].to_string(),
        "--json",
    ])));
    let object = c
        .path()
        .join("exports")
        .join(shown["result"]["object"].as_str().unwrap());
    let entries = crate::common::archive_entries(&std::fs::read(object).unwrap(), &identity);
    assert_eq!(entries["files/documents/ada/id-card.jpg"], files[0].1);
    assert!(
        !entries.contains_key("files/documents/ada/scan.pdf"),
        "past the limit"
    );
    assert!(
        !entries.keys().any(|k| k.contains("bob")),
        "only the subject's files"
    );
    let readme = String::from_utf8(entries["README.txt"].clone()).unwrap();
    assert!(
        readme.contains("files/documents/ada/scan.pdf (70 bytes): the export's size limit of 100 bytes was reached"),
        "{readme}"
    );
    assert!(
        readme.contains("files/documents/ada/missing.pdf: not found in the store"),
        "{readme}"
    );
    assert_eq!(shown["result"]["files"], 1, "{shown}");
}

/// The demo's documents have files in its `file://appfiles` store: the
/// member's export carries theirs; a purge deletes the expired documents'
/// files (the closed orgs') and reports them per class and org, leaving the
/// others; the member's erasure leaves none of theirs.
#[test]
fn the_demo_purges_exports_and_erases_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let v = stdout_json(&run_ok(
        crate::common::lethe()
            .args(["demo", "--json", "--dir"])
            .arg(&dir),
    ));
    assert_eq!(v["seeded"]["document_files"], 1500, "{}", v["seeded"]);
    let lethe = || {
        let mut cmd = crate::common::lethe();
        cmd.arg("--config").arg(dir.join("lethe.toml"));
        cmd
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = format!("sqlite://{}", dir.join("app.db").display());
    let keys_of = |sql: &str| rt.block_on(crate::common::app_strings(&url, sql));
    let members = keys_of("SELECT storage_key FROM documents WHERE owner_user_id = 2");
    assert!(!members.is_empty());
    let files = dir.join("appfiles");
    // The demo deleted tenant 12 (org.purge): its files went with its rows, so
    // every file left in the store is referenced by a document.
    let referenced: std::collections::HashSet<String> =
        keys_of("SELECT storage_key FROM documents WHERE storage_key IS NOT NULL")
            .into_iter()
            .collect();
    let mut stored = Vec::new();
    let mut todo = vec![files.clone()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                stored.push(
                    p.strip_prefix(&files)
                        .unwrap()
                        .to_string_lossy()
                        .to_string(),
                );
            }
        }
    }
    let orphans: Vec<&String> = stored.iter().filter(|k| !referenced.contains(*k)).collect();
    assert!(orphans.is_empty(), "files no row references: {orphans:?}");
    assert_eq!(v["orgs"]["deletion"]["org"], "12", "{}", v["orgs"]);
    let purge = v["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["job"] == "org.purge")
        .unwrap();
    let certificate = &purge["result"]["deleted"][0];
    assert!(
        certificate["files"]["objects"].as_u64().unwrap() > 0,
        "{purge}"
    );
    assert!(
        certificate["keys_shredded"]["kek_id"].is_string(),
        "every class went, so the org's keys were shredded: {purge}"
    );
    // The accounts that moved to org 1 carried their encrypted phone numbers
    // over, re-sealed under org 1's key: an export of org 1 opens every one.
    assert!(
        certificate["accounts_moved"].as_u64().unwrap() > 0,
        "{purge}"
    );
    let export = stdout_json(&run_ok(
        lethe().args(["org", "export", "--org", "1", "--json"]),
    ));
    for t in export["manifest"]["tables"].as_array().unwrap() {
        assert_eq!(t["unreadable"], 0, "{t}");
    }
    // The certificate is signed with the audit key: recomputed, the HMAC matches.
    let mut unsigned = certificate.clone();
    let signature = unsigned
        .as_object_mut()
        .unwrap()
        .remove("signature")
        .unwrap();
    let key = std::fs::read_to_string(dir.join("secrets/audit-signing-key")).unwrap();
    let mut mac = lethe::audit::signer(key.trim().as_bytes());
    hmac::Mac::update(
        &mut mac,
        serde_json::to_string(&unsigned).unwrap().as_bytes(),
    );
    assert_eq!(
        signature["hmac"],
        lethe::audit::finish_hex(mac),
        "{signature}"
    );

    // The member's export (the demo's request 2) carries every one of their files.
    let shown = stdout_json(&run_ok(lethe().args(["dsr", "show", "2", "--json"])));
    let object = dir
        .join("objects")
        .join(shown["result"]["object"].as_str().unwrap());
    let identity: age::x25519::Identity =
        // Exports are sealed to the DPO's key, not the backups'.
        std::fs::read_to_string(dir.join("secrets/dpo-export.key"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
    let mut in_archive = Vec::new();
    for (name, body) in crate::common::archive_texts(&std::fs::read(&object).unwrap(), &identity) {
        if let Some(key) = name.strip_prefix("files/documents/") {
            assert!(body.contains("Owner: user 2"), "{name}");
            in_archive.push(key.to_string());
        }
    }
    in_archive.sort();
    let mut expected = members.clone();
    expected.sort();
    assert_eq!(in_archive, expected);

    // The purge: the closed orgs' documents and their files go, per class and org.
    let closed = keys_of("SELECT storage_key FROM documents WHERE org_id IN (11, 12)");
    let r = stdout_json(&run_ok(lethe().args(["run", "retention.purge", "--json"])));
    let by_org = &r["result"]["objects"]["customer_content"];
    // Tenant 12 asked to be deleted in the demo: org.purge took its documents and files already.
    let purged =
        by_org["11"]["objects"].as_u64().unwrap() + by_org["12"]["objects"].as_u64().unwrap_or(0);
    assert_eq!(purged, closed.len() as u64, "{r}");
    assert!(
        closed.iter().all(|k| !files.join(k).exists()),
        "expired files gone"
    );
    let left = keys_of("SELECT storage_key FROM documents");
    assert!(
        left.iter().all(|k| files.join(k).exists()),
        "unexpired files stay"
    );

    // The member's erasure: none of their files remain.
    run_ok(lethe().args([
        "dsr",
        "submit",
        "--kind",
        "erasure",
        "--subject",
        "member@demo.example",
    ]));
    let run = stdout_json(&run_ok(lethe().args(["run", "dsr.process", "--json"])));
    assert_eq!(run["status"], "succeeded", "{run}");
    assert!(
        members.iter().all(|k| !files.join(k).exists()),
        "the member's files are gone"
    );
}

/// Injects: `503 SlowDown` to every `DeleteObjects` while a flag is set
/// (through the fault proxy before moto), so the purge's rows go but their
/// files cannot. Must hold: the run fails loudly, not "succeeded"; once the
/// store answers again, the retry deletes exactly the checkpointed files
/// and no row is left pointing at a deleted file.
#[tokio::test(flavor = "multi_thread")]
async fn delete_objects_failing_fails_the_run_and_the_retry_finishes_the_files() {
    use crate::common::fault_proxy::{s3_error, Fault, FaultProxy, Request, Rule};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let (Some(moto), Some(url)) = (server_env("LETHE_TEST_MOTO_URL"), fresh_pg_db().await) else {
        return;
    };
    let failing = Arc::new(AtomicBool::new(true));
    let refused = Arc::new(AtomicUsize::new(0));
    let (flag, count) = (failing.clone(), refused.clone());
    let rule: Rule = Box::new(move |r: &Request| {
        if r.method == "POST" && r.target.contains("delete") && flag.load(Ordering::SeqCst) {
            count.fetch_add(1, Ordering::SeqCst);
            Fault::Respond(503, "application/xml", s3_error("SlowDown"))
        } else {
            Fault::Pass
        }
    });
    let proxy = FaultProxy::start(&moto, rule).await;
    let s3 = s3_client(&moto);
    let bucket = format!("app-{}", uuid::Uuid::new_v4().simple());
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    for (_, _, key, _) in DOCS {
        s3.put_object()
            .bucket(&bucket)
            .key(key)
            .body(ByteStream::from_static(b"personal data"))
            .send()
            .await
            .unwrap();
    }
    let store = format!(
        "[object_stores.docs]\nurl = \"s3://{bucket}\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\npath_style = true\n",
        proxy.url
    );
    let c = ConfigDir::full(None, Some(&url), "", "", &config(&store));
    seed(&url, true).await;
    with_job_and_hold(&c, "purge", "kind = \"retention.purge\"\nschedule = \"0 0 3 * * *\"\nmax_attempts = 1\n[params]\nbatch_size = 10\n");
    let first = crate::common::run_job(c.lethe_aws(), "purge", &[]);
    assert_ne!(first["status"], "succeeded", "{first}");
    assert!(refused.load(Ordering::SeqCst) >= 1);
    let exists = |key: &str| {
        let s3 = s3.clone();
        let bucket = bucket.clone();
        let key = key.to_string();
        async move {
            s3.head_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .is_ok()
        }
    };
    assert!(exists("org1/a.pdf").await, "the files wait for the retry");

    failing.store(false, Ordering::SeqCst);
    let again = crate::common::run_job(c.lethe_aws(), "purge", &[]);
    assert_eq!(again["status"], "succeeded", "{again}");
    assert!(
        !exists("org1/a.pdf").await && !exists("org1/c.pdf").await,
        "{again}"
    );
    for key in crate::common::app_strings(&url, "SELECT storage_key FROM documents").await {
        assert!(
            exists(&key).await,
            "row left pointing at a deleted file: {key}"
        );
    }
}

/// `lethe objects orphans` lists the files no row references (a folder
/// store), with their sizes, and nothing a row references.
#[tokio::test(flavor = "multi_thread")]
async fn orphans_are_the_files_no_row_references() {
    let c = ConfigDir::full(
        None,
        None,
        "",
        "",
        &config("[object_stores.docs]\nurl = \"file://appfiles\"\n"),
    );
    let url = format!("sqlite://{}", c.path().join("app.db").display());
    seed(&url, false).await;
    let root = c.path().join("appfiles");
    for key in [
        "org1/a.pdf",
        "org1/shared.pdf",
        "org1/leaked.pdf",
        "tmp/upload-1",
    ] {
        put_file(&root, key, "0123456789");
    }
    run_ok(c.lethe().arg("migrate"));
    let v = stdout_json(&run_ok(
        c.lethe()
            .args(["objects", "orphans", "--store", "docs", "--json"]),
    ));
    assert_eq!(v["objects_listed"], 4, "{v}");
    assert_eq!(
        v["orphans"],
        json!([{"key": "org1/leaked.pdf", "bytes": 10}, {"key": "tmp/upload-1", "bytes": 10}])
    );
    assert_eq!(v["orphan_bytes"], 20);
    let out = c
        .lethe()
        .args(["objects", "orphans", "--store", "nope"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `[[object_retention]]` on a folder store: files no row references,
/// expired by age (last-modified) or by their org's closure, kept under a
/// legal hold on their org or subject or by an org's longer override; a dry
/// run deletes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn files_by_prefix_and_age_follow_retention_and_holds() {
    const KEY: &str = "objects-test-pseudonym-key-01234";
    let c = ConfigDir::full(
        None,
        None,
        "",
        "",
        "[app]\nsubjects = { table = \"users\", id = \"id\", email = \"email\" }\n\
         orgs = { table = \"orgs\", id = \"id\", closed_at = \"closed_at\" }\n\n\
         [object_stores.captures]\nurl = \"file://captures\"\n\n\
         [[object_retention]]\nstore = \"captures\"\nkeys = \"frames/{org}/{subject}/\"\n\
         class = \"identity_frames\"\nretention = [\"90d\", \"org_closed+30d\"]\n",
    );
    let url = format!("sqlite://{}", c.path().join("app.db").display());
    app_exec(
        &url,
        "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT);
         INSERT INTO users VALUES (10, 'ada@x.example'), (11, 'held@x.example');
         CREATE TABLE orgs (id INTEGER PRIMARY KEY, closed_at TEXT);
         INSERT INTO orgs VALUES (1, NULL), (2, NULL), (3, datetime('now', '-400 days')), (4, NULL);",
    )
    .await;
    let root = c.path().join("captures");
    let files = [
        ("frames/1/10/old.jpg", true),
        ("frames/1/10/new.jpg", false),
        ("frames/2/20/old.jpg", true),
        ("frames/1/11/old.jpg", true),
        ("frames/3/30/new.jpg", false),
        ("frames/README", true),
        ("frames/4/40/old.jpg", true),
    ];
    for (key, old) in files {
        let p = put_file(&root, key, "frame");
        if old {
            let ok = std::process::Command::new("touch")
                .args(["-d", "200 days ago"])
                .arg(&p)
                .status()
                .unwrap();
            assert!(ok.success());
        }
    }
    with_job_and_hold(
        &c,
        "purge",
        "kind = \"retention.purge\"\nschedule = \"0 0 3 * * *\"\nmax_attempts = 1\n",
    );
    run_ok(c.lethe().env("LETHE_PSEUDONYM_KEY", KEY).args([
        "hold",
        "add",
        "--subject",
        "held@x.example",
        "--reason",
        "inquiry",
    ]));
    // Org 4 keeps its frames a year: the override replaces the 90 days.
    run_ok(c.lethe().args([
        "retention",
        "set",
        "--class",
        "identity_frames",
        "--org",
        "4",
        "--period",
        "365d",
        "--reason",
        "contract",
    ]));
    let dry = stdout_json(&run_ok(c.lethe().env("LETHE_PSEUDONYM_KEY", KEY).args([
        "run",
        "purge",
        "--dry-run",
        "--json",
    ])));
    assert_eq!(
        dry["result"]["object_retention"][0]["would_delete"], 2,
        "{dry}"
    );
    assert!(
        root.join("frames/1/10/old.jpg").exists(),
        "a dry run deletes nothing"
    );

    let r = stdout_json(&run_ok(
        c.lethe()
            .env("LETHE_PSEUDONYM_KEY", KEY)
            .args(["run", "purge", "--json"]),
    ));
    assert_eq!(r["status"], "succeeded", "{r}");
    let rule = &r["result"]["object_retention"][0];
    assert_eq!(
        (
            &rule["listed"],
            &rule["expired"],
            &rule["kept_for_holds"],
            &rule["not_matching_the_template"]
        ),
        (&json!(7), &json!(2), &json!(2), &json!(1)),
        "{r}"
    );
    let left: Vec<&str> = files
        .iter()
        .map(|f| f.0)
        .filter(|k| root.join(k).exists())
        .collect();
    assert_eq!(
        left,
        [
            "frames/1/10/new.jpg",
            "frames/2/20/old.jpg",
            "frames/1/11/old.jpg",
            "frames/README",
            "frames/4/40/old.jpg"
        ]
    );
    let by_org = &r["result"]["objects"]["identity_frames"];
    assert_eq!(
        (&by_org["1"]["objects"], &by_org["3"]["objects"]),
        (&json!(1), &json!(1)),
        "{r}"
    );
}

/// A file version under Object Lock (moto enforces COMPLIANCE retention on
/// delete): the purge deletes its row and the unlocked files, reports the
/// locked one as kept by object lock, does not fail, and defers the file's
/// delete (the pending entry waits, so the next run does not retry it now).
#[tokio::test(flavor = "multi_thread")]
async fn a_file_under_object_lock_is_reported_and_deferred() {
    let (Some(moto), Some(url)) = (server_env("LETHE_TEST_MOTO_URL"), fresh_pg_db().await) else {
        return;
    };
    let s3 = s3_client(&moto);
    let bucket = format!("lock-{}", uuid::Uuid::new_v4().simple());
    s3.create_bucket()
        .bucket(&bucket)
        .object_lock_enabled_for_bucket(true)
        .send()
        .await
        .unwrap();
    let mut locked_version = String::new();
    for (_, _, key, _) in DOCS {
        let put = s3
            .put_object()
            .bucket(&bucket)
            .key(key)
            .body(ByteStream::from_static(b"personal data"))
            .send()
            .await
            .unwrap();
        if key == "org1/a.pdf" {
            locked_version = put.version_id().unwrap().to_string();
        }
    }
    let until =
        aws_sdk_s3::primitives::DateTime::from_secs(chrono::Utc::now().timestamp() + 2 * 86_400);
    s3.put_object_retention()
        .bucket(&bucket)
        .key("org1/a.pdf")
        .version_id(&locked_version)
        .retention(
            aws_sdk_s3::types::ObjectLockRetention::builder()
                .mode(aws_sdk_s3::types::ObjectLockRetentionMode::Compliance)
                .retain_until_date(until)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let store = format!(
        "[object_stores.docs]\nurl = \"s3://{bucket}\"\nendpoint = \"{moto}\"\nregion = \"us-east-1\"\npath_style = true\n"
    );
    let c = ConfigDir::full(None, Some(&url), "", "", &config(&store));
    seed(&url, true).await;
    with_job_and_hold(
        &c,
        "purge",
        "kind = \"retention.purge\"\nschedule = \"0 0 3 * * *\"\nmax_attempts = 1\n",
    );
    let r = crate::common::run_job(c.lethe_aws(), "purge", &[]);
    assert_eq!(r["status"], "succeeded", "{r}");
    let org1 = &r["result"]["objects"]["statements"]["1"];
    assert_eq!(org1["objects"], 1, "c.pdf went: {r}");
    assert_eq!(
        org1["kept_by_object_lock"].as_array().map(Vec::len),
        Some(1),
        "{r}"
    );
    let head = s3
        .head_object()
        .bucket(&bucket)
        .key("org1/a.pdf")
        .send()
        .await;
    assert!(head.is_ok(), "the locked file stays");
    // Deferred, not retried by the next run.
    let store_url = format!("sqlite://{}", c.path().join("lethe.db").display());
    let deferred = crate::common::app_strings(
        &store_url,
        "SELECT object_key FROM pending_object_deletes WHERE not_before IS NOT NULL",
    )
    .await;
    assert_eq!(deferred, ["org1/a.pdf"]);
    let again = crate::common::run_job(c.lethe_aws(), "purge", &[]);
    assert_eq!(again["status"], "succeeded", "{again}");
    assert_eq!(
        again["result"]["objects"],
        json!({}),
        "nothing retried before the date: {again}"
    );
}
