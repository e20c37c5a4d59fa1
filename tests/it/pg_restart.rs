//! PostgreSQL restarted under a running `lethe serve`. This restarts the test
//! rig's shared cluster, so it lives alone in this test binary (cargo runs
//! test binaries one after another).

use std::time::{Duration, Instant};

use crate::common::{run_ok, ConfigDir};

/// Injects: a fast restart of the PostgreSQL cluster that holds both Lethe's
/// store and the application database, while `serve` is part-way through a
/// batched retention purge (every connection is dropped; the server is gone
/// for about a second).
/// Must hold: `serve` stays up and is ready again afterwards; the run ends
/// `succeeded` (retried from its checkpoint if the attempt failed) with
/// exactly the expired rows deleted and counted once.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_restart_mid_purge_is_survived_and_the_run_completes() {
    let Some(restart) = crate::common::server_env("LETHE_TEST_PG_RESTART") else {
        return;
    };
    let Some(url) = crate::common::fresh_pg_db().await else {
        return;
    };
    {
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        sqlx::raw_sql(
            "CREATE TABLE events (id serial PRIMARY KEY, org_id int, created_at timestamptz NOT NULL);
             CREATE INDEX ON events (created_at);
             INSERT INTO events (org_id, created_at)
                 SELECT g % 3, now() - make_interval(days => g, hours => 12) FROM generate_series(1, 300) g;",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
    }
    let map = r#"
[[data_map]]
table = "events"
class = "events"
timestamp = "created_at"
org = "org_id"
retention = "90d"
"#;
    let runner =
        "lease = \"2s\"\nretry_base = \"200ms\"\nretry_max = \"1s\"\npoll_interval = \"100ms\"";
    let c = ConfigDir::full(Some(&url), Some(&url), runner, "", map);
    c.job(
        "purge",
        "kind = \"retention.purge\"\nschedule = \"0 15 2 * * *\"\nenabled = false\nmax_attempts = 10\n\
         [params]\nbatch_size = 5\npause_ms = 100\n",
    );
    run_ok(c.lethe().arg("migrate"));
    let port = crate::common::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut cmd = c.lethe();
    cmd.env("LETHE_HTTP_LISTEN", &addr);
    let mut serve = crate::common::spawn_serve(cmd, &c.path().join("serve.log"), &[]);
    run_ok(c.lethe().args(["run", "purge", "--detach"]));

    let count = || async {
        // A fresh connection each time: the pool would not survive the restart either.
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
        n
    };
    let until = Instant::now() + Duration::from_secs(30);
    while count().await > 300 - 30 {
        assert!(Instant::now() < until, "the purge never started deleting");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = std::process::Command::new(&restart).output().unwrap();
    assert!(
        out.status.success(),
        "restart failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        count().await > 89,
        "the restart landed mid-purge (not after it)"
    );

    let run = crate::common::wait_run_end(|| c.lethe(), "purge", 90);
    assert!(
        serve.try_wait().unwrap().is_none(),
        "serve survived the restart"
    );
    let ready = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        crate::common::http_get(&addr, "/readyz").is_ok_and(|(code, _)| code == 200)
    });
    crate::common::signal(&serve, libc::SIGTERM);
    crate::common::wait_exit(&mut serve, 30);
    assert!(ready, "serve is ready again after the restart");
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(
        run["result"]["deleted"], 211,
        "every expired row counted once: {run}"
    );
    assert_eq!(
        count().await,
        89,
        "exactly the expired rows (ages 90.5 to 300.5 days) are gone"
    );
}
