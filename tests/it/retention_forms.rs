//! retention.purge compares each timestamp in the form the application stores
//! it: on SQLite unix seconds or milliseconds, julian days, ISO text with `T`,
//! `Z` or `±HH:MM` offsets (an INTEGER once compared as text, so every row
//! looked expired); org closure dates too. What cannot be read is refused
//! (exit 2) before anything is deleted. On PostgreSQL `timestamp` and `date`
//! are read as UTC whatever the server's time zone (sqlx opens sessions in UTC;
//! guarded here). NULL never expires.

use crate::common::{app_exec, app_i64, run_ok, stdout_json, ConfigDir};
use serde_json::Value;

const EVENTS_30D: &str = r#"
[[data_map]]
table = "events"
class = "events"
timestamp = "ts"
retention = "30d"
"#;

fn job() -> &'static str {
    "kind = \"retention.purge\"\nschedule = \"0 15 2 * * *\"\n[params]\nbatch_size = 3\n"
}

async fn sqlite_dir(map: &str, sql: &str) -> (ConfigDir, String) {
    let c = ConfigDir::full(None, None, "", "", map);
    let url = format!("sqlite://{}", c.path().join("app.db").display());
    c.job("purge", job());
    app_exec(&url, sql).await;
    run_ok(c.lethe().arg("migrate"));
    (c, url)
}

/// Ages (SQLite modifiers) of the rows: `kept` rows are younger than 30 days or NULL.
const KEPT: [&str; 4] = ["-0 days", "-1 days", "-29 days", "-43198 minutes"];
const GONE: [&str; 4] = ["-43202 minutes", "-31 days", "-60 days", "-400 days"];

/// `events(id, user_id, ts <declared>)` with one row per age, written by `value(age)`, and a NULL.
fn events_sql(declared: &str, value: impl Fn(&str) -> String) -> String {
    let mut sql = format!(
        "CREATE TABLE events (id INTEGER PRIMARY KEY, user_id INTEGER, ts {declared});
         CREATE INDEX events_ts ON events (ts);
         INSERT INTO events (user_id, ts) VALUES (0, NULL);"
    );
    for (i, age) in KEPT.iter().chain(GONE.iter()).enumerate() {
        sql.push_str(&format!(
            "INSERT INTO events (user_id, ts) VALUES ({}, {});",
            i + 1,
            value(age)
        ));
    }
    sql
}

fn purge(c: &ConfigDir) -> Value {
    let v = stdout_json(&run_ok(c.lethe().args(["run", "purge", "--json"])));
    assert_eq!(v["status"], "succeeded", "{v}");
    v
}

/// Every `timestamp form` line of `check --json`, one per line.
fn form_check(c: &ConfigDir) -> String {
    let v = stdout_json(&run_ok(c.lethe().args(["check", "--json"])));
    let lines: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"] == "timestamp form")
        .map(|c| c["detail"].as_str().unwrap())
        .collect();
    assert!(!lines.is_empty(), "no timestamp form in {v}");
    lines.join("\n")
}

/// Each storage form: the 4 rows older than 30 days go (the one 2 minutes past
/// the cutoff included), the 4 younger ones and the NULL stay; `check` names the form.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_purge_reads_each_storage_form() {
    type Writer = fn(&str) -> String;
    let forms: [(&str, &str, Writer); 6] = [
        ("INTEGER", "unix seconds", |a| {
            format!("CAST(strftime('%s', 'now', '{a}') AS INTEGER)")
        }),
        ("INTEGER", "unix milliseconds", |a| {
            format!("CAST(strftime('%s', 'now', '{a}') AS INTEGER) * 1000 + 999")
        }),
        ("REAL", "julian day", |a| format!("julianday('now', '{a}')")),
        ("TEXT", "YYYY-MM-DDTHH:MM:SS[Z]", |a| {
            format!("strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '{a}')")
        }),
        ("TEXT", "offsets", |a| {
            format!("strftime('%Y-%m-%dT%H:%M:%S', 'now', '{a}', '+2 hours') || '+02:00'")
        }),
        ("DATETIME", "YYYY-MM-DD HH:MM:SS", |a| {
            format!("datetime('now', '{a}')")
        }),
    ];
    for (declared, named, value) in forms {
        let (c, url) = sqlite_dir(EVENTS_30D, &events_sql(declared, value)).await;
        let v = purge(&c);
        assert_eq!(v["result"]["deleted"], 4, "{named}: {v}");
        let left = app_i64(&url, "SELECT count(*) FROM events").await;
        assert_eq!(left, 5, "{named}: the young rows and the NULL stay");
        assert_eq!(
            app_i64(&url, "SELECT count(*) FROM events WHERE user_id > 4").await,
            0,
            "{named}: exactly the old rows went"
        );
        assert_eq!(
            app_i64(&url, "SELECT count(*) FROM events WHERE ts IS NULL").await,
            1
        );
        let detail = form_check(&c);
        assert!(
            detail.contains("`events`.`ts`") && detail.contains(named),
            "{named}: {detail}"
        );
    }
}

/// What cannot be read as one form is refused by `check` and `run` with exit
/// 2, naming the table, the column and what was found; nothing is deleted.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_unreadable_timestamps_are_refused_with_exit_2() {
    let cases = [
        (
            "mixed",
            events_sql("", |a| format!("CAST(strftime('%s', 'now', '{a}') AS INTEGER)"))
                + "INSERT INTO events (user_id, ts) VALUES (99, datetime('now'));",
            "different storage classes",
        ),
        (
            "not ISO",
            events_sql("TEXT", |a| format!("strftime('%d/%m/%Y %H:%M', 'now', '{a}')")),
            "99/99/9999 99:99",
        ),
        (
            "empty strings",
            events_sql("TEXT", |a| format!("datetime('now', '{a}')"))
                + "INSERT INTO events (user_id, ts) VALUES (99, '');",
            "empty text",
        ),
        (
            "seconds and milliseconds",
            events_sql("INTEGER", |a| format!("CAST(strftime('%s', 'now', '{a}') AS INTEGER)"))
                + "INSERT INTO events (user_id, ts) VALUES (99, CAST(strftime('%s', 'now') AS INTEGER) * 1000);",
            "another unit",
        ),
    ];
    for (name, sql, found) in cases {
        let (c, url) = sqlite_dir(EVENTS_30D, &sql).await;
        let rows = app_i64(&url, "SELECT count(*) FROM events").await;
        for args in [vec!["check"], vec!["run", "purge"]] {
            let out = c.lethe().args(&args).output().unwrap();
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(out.status.code(), Some(2), "{name} {args:?}: {all}");
            for needle in ["`events`.`ts`", found, "lethe.toml:", "convert the column"] {
                assert!(all.contains(needle), "{name} {args:?}: `{needle}` in {all}");
            }
        }
        assert_eq!(
            app_i64(&url, "SELECT count(*) FROM events").await,
            rows,
            "{name}: nothing deleted"
        );
    }
}

/// `org_closed+30d` with an INTEGER `closed_at`: only the org closed 60 days
/// ago loses its rows; the one closed 10 days ago and the open one keep theirs.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_org_closed_reads_integer_closed_at() {
    let map = r#"
[app]
subjects = { table = "users", id = "id", email = "email" }
orgs = { table = "orgs", id = "id", closed_at = "closed_at" }

[[data_map]]
table = "events"
class = "events"
timestamp = "created_at"
org = "org_id"
retention = ["90d", "org_closed+30d"]
"#;
    let sql = "
CREATE TABLE orgs (id INTEGER PRIMARY KEY, closed_at INTEGER);
CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL);
CREATE TABLE events (id INTEGER PRIMARY KEY, org_id INTEGER, created_at TEXT NOT NULL);
INSERT INTO orgs VALUES (1, NULL), (2, CAST(strftime('%s', 'now', '-10 days') AS INTEGER)),
    (3, CAST(strftime('%s', 'now', '-60 days') AS INTEGER));
INSERT INTO events (org_id, created_at) VALUES (1, datetime('now', '-1 days')), (2, datetime('now', '-1 days')),
    (3, datetime('now', '-1 days')), (3, datetime('now', '-5 days')), (2, datetime('now', '-100 days'));
";
    let (c, url) = sqlite_dir(map, sql).await;
    let v = purge(&c);
    assert_eq!(
        v["result"]["deleted"], 3,
        "org 3's two rows and org 2's old one: {v}"
    );
    assert_eq!(
        app_i64(&url, "SELECT count(*) FROM events WHERE org_id = 3").await,
        0
    );
    assert_eq!(
        app_i64(&url, "SELECT count(*) FROM events WHERE org_id IN (1, 2)").await,
        2
    );
    let forms = form_check(&c);
    assert!(
        forms.contains("`orgs`.`closed_at`: unix seconds"),
        "{forms}"
    );
}

/// A server whose time zone is UTC+14: `timestamp` (naive, meaning UTC) and
/// `date` columns still expire at the UTC cutoff; `timestamptz` always did;
/// NULL stays; a bigint column is refused with exit 2.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_timestamp_and_date_columns_are_read_as_utc() {
    let Some(url) = crate::common::fresh_pg_db().await else {
        return;
    };
    app_exec(&url, "
DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET timezone TO %L', current_database(), 'Pacific/Kiritimati'); END $$;
CREATE TABLE ev_naive (id serial, ts timestamp);
CREATE TABLE ev_tz (id serial, ts timestamptz);
CREATE TABLE ev_date (id serial, ts date);
INSERT INTO ev_naive (ts) VALUES ((now() AT TIME ZONE 'UTC') - interval '30 days' - interval '3 hours'),
    ((now() AT TIME ZONE 'UTC') - interval '30 days' + interval '3 hours'), (NULL);
INSERT INTO ev_tz (ts) VALUES (now() - interval '30 days' - interval '3 hours'),
    (now() - interval '30 days' + interval '3 hours'), (NULL);
INSERT INTO ev_date (ts) VALUES (((now() AT TIME ZONE 'UTC') - interval '31 days')::date),
    (((now() AT TIME ZONE 'UTC') - interval '29 days')::date), (NULL);
").await;
    let mut map = String::new();
    for t in ["ev_naive", "ev_tz", "ev_date"] {
        map.push_str(&format!(
            "\n[[data_map]]\ntable = \"{t}\"\nclass = \"{t}\"\ntimestamp = \"ts\"\nretention = \"30d\"\n"
        ));
    }
    let c = ConfigDir::full(Some(&url), Some(&url), "", "", &map);
    c.job("purge", job());
    run_ok(c.lethe().arg("migrate"));
    let v = purge(&c);
    assert_eq!(v["result"]["deleted"], 3, "one old row of each table: {v}");
    for t in ["ev_naive", "ev_tz", "ev_date"] {
        assert_eq!(
            app_i64(&url, &format!("SELECT count(*) FROM {t}")).await,
            2,
            "{t}: the young row and the NULL stay"
        );
        assert_eq!(
            app_i64(&url, &format!("SELECT min(id)::int8 FROM {t}")).await,
            2,
            "{t}: the old row went"
        );
    }

    app_exec(&url, "CREATE TABLE ev_epoch (id serial, ts bigint)").await;
    std::fs::write(
        c.config(),
        std::fs::read_to_string(c.config())
            .unwrap()
            .replace("\"ev_tz\"", "\"ev_epoch\""),
    )
    .unwrap();
    for args in [vec!["check"], vec!["run", "purge"]] {
        let out = c.lethe().args(&args).output().unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(2), "{args:?}: {all}");
        assert!(
            all.contains("`ev_epoch`.`ts` has type `bigint`"),
            "{args:?}: {all}"
        );
    }
}
