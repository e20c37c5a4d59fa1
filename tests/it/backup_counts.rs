//! The manifest's row counts are read from pg_dump's stream (no second scan)
//! and are exact for every kind of table; a stream the reader cannot follow
//! falls back to counting in the dump's snapshot, still exact.

use std::path::PathBuf;

use super::backup::{pg_s3_setup, Setup};
use serde_json::Value;

/// Tables of every kind that holds rows, with values that look like row ends.
const TABLES: &str = r#"
CREATE SCHEMA "Odd Schema";
CREATE TABLE "Odd Schema"."we""ird.name" (id int, note text);
INSERT INTO "Odd Schema"."we""ird.name" VALUES
    (1, E'line one\nline two\r\n\ttab \\ backslash'), (2, ''), (3, NULL);
CREATE TABLE empty_one (id int);
CREATE TABLE events (id int, at date NOT NULL) PARTITION BY RANGE (at);
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO events SELECT g, date '2025-01-01' + (g % 300) FROM generate_series(1, 700) g;
INSERT INTO events SELECT g, date '2026-01-01' + (g % 300) FROM generate_series(1, 300) g;
CREATE UNLOGGED TABLE scratch (id int);
INSERT INTO scratch SELECT generate_series(1, 5);
CREATE TABLE bin (b bytea);
INSERT INTO bin SELECT decode('0a0d5c090a', 'hex') FROM generate_series(1, 4);
CREATE TABLE inh_parent (id int);
CREATE TABLE inh_child () INHERITS (inh_parent);
INSERT INTO inh_parent VALUES (1), (2);
INSERT INTO inh_child VALUES (3), (4), (5);
CREATE MATERIALIZED VIEW user_emails AS SELECT email FROM users;
SELECT lo_from_bytea(0, '\x0a0a0a0a'::bytea);
"#;

fn expected() -> Vec<(&'static str, i64)> {
    vec![
        ("public.users", 1000),
        ("public.blobs", 200000),
        ("Odd Schema.we\"ird.name", 3),
        ("public.empty_one", 0),
        ("public.events_2025", 700),
        ("public.events_2026", 300),
        ("public.scratch", 5),
        ("public.bin", 4),
        ("public.inh_parent", 2),
        ("public.inh_child", 3),
    ]
}

struct Counted {
    s: Setup,
    s3: aws_sdk_s3::Client,
    bucket: String,
}

async fn setup(extra_backup: &str) -> Option<Counted> {
    let (s, s3, bucket) = pg_s3_setup(true, extra_backup).await?;
    crate::common::app_exec(&s.app_url, TABLES).await;
    Some(Counted { s, s3, bucket })
}

/// The manifest stored beside the newest backup.
async fn stored_manifest(c: &Counted) -> Value {
    let key = format!("lethe/{}", c.s.list()[0]["manifest"].as_str().unwrap());
    let got = c.s3.get_object().bucket(&c.bucket).key(key).send().await;
    let bytes = got.unwrap().body.collect().await.unwrap().into_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

async fn check_counts(c: &Counted, created: &Value, from: &str) {
    let s = &c.s;
    assert_eq!(created["status"], "succeeded", "{created}");
    assert_eq!(created["result"]["row_counts_from"], from, "{created}");
    let id = created["result"]["id"].as_str().unwrap().to_string();
    let manifest = stored_manifest(c).await;
    assert_eq!(manifest["row_counts_from"], from, "{manifest}");
    let counts = &manifest["row_counts"];
    for (table, n) in expected() {
        assert_eq!(counts[table], n, "{table} in {counts}");
    }
    assert!(
        counts.get("public.events").is_none(),
        "a partitioned parent holds no rows of its own: {counts}"
    );
    let v = s.run("backup.verify", &["--param", &format!("id=\"{id}\"")]);
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(v["result"]["ok"], true, "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn row_counts_are_read_from_the_dump_stream_for_every_kind_of_table() {
    let Some(c) = setup("").await else {
        return;
    };
    let v = c.s.run("backup.create", &[]);
    check_counts(&c, &v, "dump stream").await;
}

/// The real PostgreSQL client tools' folder.
pub(super) fn real_pg_bin() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("pg_dump").exists())
        .collect();
    dirs.sort();
    dirs.pop().expect("PostgreSQL client tools installed")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_the_reader_cannot_follow_is_counted_in_the_snapshot_instead() {
    // A pg_dump that compresses its output despite --compress=0: its data
    // chunks are zlib, so the stream reader must give up, not guess.
    let bin = tempfile::tempdir().unwrap();
    let real = real_pg_bin();
    let script = bin.path().join("pg_dump");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec '{}' \"$@\" --compress=6\n",
            real.join("pg_dump").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink(real.join("pg_restore"), bin.path().join("pg_restore")).unwrap();
    let Some(c) = setup(&format!("pg_bin = \"{}\"", bin.path().display())).await else {
        return;
    };
    let v = c.s.run("backup.create", &[]);
    check_counts(&c, &v, "snapshot count").await;
}
