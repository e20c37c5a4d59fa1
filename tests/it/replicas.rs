//! Real `lethe serve` processes on one PostgreSQL: each fire runs exactly once
//! across replicas, a SIGKILLed worker's run is rescued and completed, SIGTERM
//! drains, and the HTTP endpoints answer.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::{signal, wait_exit, ConfigDir, Reaped};
use serde_json::Value;
use sqlx::Row;

const RUNNER: &str = "poll_interval = \"100ms\"\nlease = \"2s\"\nretry_base = \"300ms\"\nretry_max = \"1s\"\ndrain_timeout = \"15s\"";

/// A replica that schedules only `job`, killed when dropped.
fn spawn_serve(c: &ConfigDir, listen: Option<u16>, job: &str) -> Reaped {
    let mut cmd = c.lethe();
    cmd.args(["serve", "--only", job])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(p) = listen {
        cmd.env("LETHE_HTTP_LISTEN", format!("127.0.0.1:{p}"));
    }
    Reaped(cmd.spawn().expect("spawn lethe serve"))
}

async fn pg_config() -> Option<(ConfigDir, sqlx::PgPool)> {
    let url = crate::common::fresh_pg_db().await?;
    let c = ConfigDir::new(Some(&url), RUNNER, "");
    crate::common::run_ok(c.lethe().arg("migrate"));
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    Some((c, pool))
}

/// (run_id → how many times test.sleep started it), from the audit chain.
async fn executions(pool: &sqlx::PgPool) -> HashMap<i64, usize> {
    let rows =
        sqlx::query("SELECT details FROM lethe.audit_events WHERE action = 'test.sleep.started'")
            .fetch_all(pool)
            .await
            .unwrap();
    let mut m = HashMap::new();
    for r in rows {
        let d: Value = serde_json::from_str(&r.get::<String, _>("details")).unwrap();
        *m.entry(d["run_id"].as_i64().unwrap()).or_default() += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_run_each_fire_exactly_once() {
    let Some((c, pool)) = pg_config().await else {
        return;
    };
    c.job("tick", "kind = \"test.sleep\"\nschedule = \"* * * * * *\"\ntimeout = \"10s\"\n[params]\nms = 300\n");
    let mut replicas: Vec<Reaped> = (0..3).map(|_| spawn_serve(&c, None, "tick")).collect();
    tokio::time::sleep(Duration::from_secs(7)).await;
    for r in &replicas {
        signal(r, libc::SIGTERM);
    }
    for r in &mut replicas {
        assert_eq!(wait_exit(r, 30), Some(0), "serve exits 0 after draining");
    }

    let runs = sqlx::query(
        "SELECT id, scheduled_for, state, attempt FROM lethe.job_runs WHERE job = 'tick'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        runs.len() >= 5,
        "about one fire a second for 7s, got {}",
        runs.len()
    );
    let execs = executions(&pool).await;
    let mut fires = std::collections::HashSet::new();
    for r in &runs {
        let id: i64 = r.get("id");
        let fire: chrono::DateTime<chrono::Utc> = r.get("scheduled_for");
        assert!(fires.insert(fire), "fire {fire} enqueued twice");
        let state: String = r.get("state");
        if state == "available" {
            continue; // enqueued in the last instant before the drain; never started
        }
        assert_eq!(state, "succeeded", "run {id}");
        assert_eq!(r.get::<i32, _>("attempt"), 1, "run {id} needed no retry");
        assert_eq!(execs.get(&id), Some(&1), "run {id} executed exactly once");
    }
    let started: usize = execs.values().sum();
    assert!(started >= 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_run_is_rescued_by_another_replica_and_completes() {
    let Some((c, pool)) = pg_config().await else {
        return;
    };
    // A yearly schedule: with catch_up = latest the last fire is enqueued at start, once.
    c.job("long", "kind = \"test.sleep\"\nschedule = \"0 0 0 1 1 *\"\ntimeout = \"1m\"\nmax_attempts = 3\n[params]\nms = 3000\n");
    let mut replicas: Vec<Reaped> = (0..3).map(|_| spawn_serve(&c, None, "long")).collect();

    let deadline = Instant::now() + Duration::from_secs(20);
    let (run_id, owner) = loop {
        let row = sqlx::query(
            "SELECT id, lease_owner FROM lethe.job_runs WHERE job = 'long' AND state = 'running'",
        )
        .fetch_optional(&pool)
        .await
        .unwrap();
        if let Some(r) = row {
            let id = r.get::<i64, _>("id");
            // Kill only once the job body has begun (its start is in the audit chain).
            if executions(&pool).await.contains_key(&id) {
                break (id, r.get::<String, _>("lease_owner"));
            }
        }
        assert!(Instant::now() < deadline, "the run never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let pid: u32 = owner.split(':').nth(1).unwrap().parse().unwrap();
    let victim = replicas
        .iter()
        .position(|r| r.id() == pid)
        .expect("owner is one of our replicas");
    let mut killed = replicas.remove(victim);
    killed.kill().unwrap(); // SIGKILL: no drain, no goodbye
    killed.wait().unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    let (state, attempt, error) = loop {
        let r = sqlx::query("SELECT state, attempt, error FROM lethe.job_runs WHERE id = $1")
            .bind(run_id)
            .fetch_one(&pool)
            .await
            .unwrap();
        let state: String = r.get("state");
        if state == "succeeded" || state == "dead" {
            break (
                state,
                r.get::<i32, _>("attempt"),
                r.get::<Option<String>, _>("error"),
            );
        }
        assert!(
            Instant::now() < deadline,
            "the run was not rescued and completed (state {state})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(state, "succeeded");
    assert_eq!(attempt, 2, "one killed attempt, one that completed");
    assert_eq!(error, None);
    assert_eq!(executions(&pool).await.get(&run_id), Some(&2));
    let rescued: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM lethe.audit_events WHERE action = 'job.failed' AND details LIKE '%lease expired%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(rescued, 1, "the rescue is in the evidence");
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM lethe.job_runs WHERE job = 'long'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        runs, 1,
        "restarts of replicas did not enqueue the yearly fire again"
    );

    for r in &replicas {
        signal(r, libc::SIGTERM);
    }
    for r in &mut replicas {
        assert_eq!(wait_exit(r, 30), Some(0));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_answers_health_readiness_metrics_and_drains_on_sigterm() {
    let c = ConfigDir::new(None, RUNNER, "");
    c.job(
        "work",
        "kind = \"test.sleep\"\nschedule = \"0 0 0 1 1 *\"\n[params]\nms = 1500\n",
    );
    crate::common::run_ok(c.lethe().arg("migrate"));
    let port = crate::common::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = spawn_serve(&c, Some(port), "work");

    let deadline = Instant::now() + Duration::from_secs(15);
    while crate::common::http_get(&addr, "/healthz").is_err() {
        assert!(Instant::now() < deadline, "serve did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        crate::common::http_get(&addr, "/healthz").unwrap(),
        (200, "ok\n".into())
    );
    assert_eq!(crate::common::http_get(&addr, "/readyz").unwrap().0, 200);

    // The yearly job's latest fire runs at start; SIGTERM while it sleeps.
    let store = c.path().join("lethe.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", store.display()))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let running: i64 =
            sqlx::query_scalar("SELECT count(*) FROM job_runs WHERE state = 'running'")
                .fetch_one(&pool)
                .await
                .unwrap();
        if running == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the run never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (code, metrics) = crate::common::http_get(&addr, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains("lethe_queue_depth{state=\"running\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("lethe_runs{job=\"work\",state=\"running\"} 1"),
        "{metrics}"
    );

    signal(&child, libc::SIGTERM);
    assert_eq!(wait_exit(&mut child, 30), Some(0));
    let (state, attempt): (String, i64) =
        sqlx::query_as("SELECT state, attempt FROM job_runs WHERE job = 'work'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        (state.as_str(), attempt),
        ("succeeded", 1),
        "the in-flight run finished during the drain"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_attempts_and_durations() {
    let c = ConfigDir::new(None, RUNNER, "");
    c.job(
        "quick",
        "kind = \"test.sleep\"\nschedule = \"* * * * * *\"\n[params]\nms = 10\n",
    );
    crate::common::run_ok(c.lethe().arg("migrate"));
    let port = crate::common::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = spawn_serve(&c, Some(port), "quick");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok((200, m)) = crate::common::http_get(&addr, "/metrics") {
            if m.contains("lethe_job_attempts_total{job=\"quick\",outcome=\"succeeded\"}")
                && m.contains("lethe_job_duration_seconds_count{job=\"quick\"}")
            {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed the job's attempts"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    signal(&child, libc::SIGTERM);
    assert_eq!(wait_exit(&mut child, 30), Some(0));
}
