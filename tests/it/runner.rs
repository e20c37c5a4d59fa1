//! The runner through the library: retries with backoff, dead runs mailed to
//! ops, timeouts, and the enqueuer's no-back-fill rule — on SQLite and PostgreSQL.

use std::sync::Arc;
use std::time::Duration;

use crate::common::ConfigDir;
use chrono::Utc;
use lethe::context::Context;
use lethe::runner::{execute, run_now, Enqueuer};
use lethe::store::{NewRun, RunFilter, RunState};
use serde_json::json;
use tokio::sync::watch;

const RUNNER: &str = "retry_base = \"50ms\"\nretry_max = \"200ms\"\nlease = \"5s\"";

async fn open(c: &ConfigDir) -> Arc<Context> {
    let ctx = Context::open_unchecked(c.load()).await.unwrap();
    ctx.store.migrate().await.unwrap();
    ctx
}

async fn config(pg: bool, runner: &str) -> Option<ConfigDir> {
    let url = if pg {
        Some(crate::common::fresh_pg_db().await?)
    } else {
        None
    };
    Some(ConfigDir::new(url.as_deref(), runner, ""))
}

macro_rules! both {
    ($($case:ident),*) => {
        mod sqlite { $(#[tokio::test(flavor = "multi_thread")] async fn $case() { if let Some(c) = super::config(false, super::RUNNER).await { super::$case(c).await } })* }
        mod postgres { $(#[tokio::test(flavor = "multi_thread")] async fn $case() { if let Some(c) = super::config(true, super::RUNNER).await { super::$case(c).await } })* }
    };
}

both!(
    failing_job_retries_with_backoff_then_dies_and_ops_are_mailed,
    timeout_fails_the_attempt,
    enqueuer_enqueues_each_fire_once_across_replicas,
    downtime_is_not_back_filled_beyond_the_latest_fire,
    catch_up_skip_waits_for_the_next_fire
);

async fn failing_job_retries_with_backoff_then_dies_and_ops_are_mailed(c: ConfigDir) {
    c.job("flaky", "kind = \"test.sleep\"\nschedule = \"0 0 3 * * *\"\nmax_attempts = 2\n[params]\nfail = true\n");
    let ctx = open(&c).await;
    let spec = ctx.config.job("flaky").unwrap().clone();
    let first = run_now(
        &ctx,
        &lethe::jobs::registry(),
        &spec,
        spec.params.clone(),
        false,
    )
    .await
    .unwrap();
    assert_eq!((first.status, first.attempts), ("failed", 1));
    assert!(first.error.as_deref().unwrap().contains("asked to fail"));
    let next = first
        .next_attempt_at
        .expect("a failed run says when it is retried");
    let delay = (next - first.finished_at.unwrap()).num_milliseconds();
    assert!(
        (0..=60).contains(&delay),
        "first retry after base/2..base (50ms): {delay}ms"
    );

    tokio::time::sleep(Duration::from_millis(80)).await;
    let run = ctx
        .store
        .claim_next("w2", Duration::from_secs(5))
        .await
        .unwrap()
        .expect("retry is due");
    assert_eq!((run.id, run.attempt), (first.run_id, 2));
    let (_tx, rx) = watch::channel(false);
    let done = execute(ctx.clone(), &lethe::jobs::registry(), run, "w2".into(), rx)
        .await
        .unwrap();
    assert_eq!(done.state, RunState::Dead);

    let mail = ctx.store.outbox_list(10).await.unwrap();
    let dead_mail = mail
        .iter()
        .find(|m| m.subject.contains("flaky is dead"))
        .expect("ops mailed");
    assert_eq!(dead_mail.recipients, vec!["ops@test.example".to_string()]);
    assert!(dead_mail.text.contains("asked to fail") && dead_mail.html.contains("asked to fail"));

    let mut buf = Vec::new();
    lethe::audit::export(ctx.store.as_ref(), &mut buf, None)
        .await
        .unwrap();
    let text = String::from_utf8(buf).unwrap();
    assert!(text.contains("\"action\":\"job.failed\"") && text.contains("\"action\":\"job.dead\""));
}

async fn timeout_fails_the_attempt(c: ConfigDir) {
    c.job("slow", "kind = \"test.sleep\"\nschedule = \"0 0 3 * * *\"\ntimeout = \"200ms\"\nmax_attempts = 1\n[params]\nms = 5000\n");
    let ctx = open(&c).await;
    let spec = ctx.config.job("slow").unwrap().clone();
    let started = std::time::Instant::now();
    let r = run_now(
        &ctx,
        &lethe::jobs::registry(),
        &spec,
        spec.params.clone(),
        false,
    )
    .await
    .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the timeout cut the 5s sleep"
    );
    assert_eq!(r.status, "dead");
    assert!(r.error.unwrap().contains("timed out after 200ms"));
}

async fn enqueuer_enqueues_each_fire_once_across_replicas(c: ConfigDir) {
    c.job(
        "every-second",
        "kind = \"test.sleep\"\nschedule = \"* * * * * *\"\n",
    );
    let ctx = open(&c).await;
    // Two replicas' enqueuers tick over the same seconds.
    let mut a = Enqueuer::new(ctx.clone()).await.unwrap();
    let mut b = Enqueuer::new(ctx.clone()).await.unwrap();
    let mut inserted = 0;
    for _ in 0..6 {
        inserted += a.tick().await.unwrap();
        inserted += b.tick().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let runs = ctx
        .store
        .list_runs(&RunFilter {
            job: Some("every-second".into()),
            state: None,
            limit: 100,
        })
        .await
        .unwrap();
    assert_eq!(inserted, runs.len(), "each insert is one row");
    let mut fires: Vec<_> = runs.iter().map(|r| r.scheduled_for).collect();
    fires.sort();
    fires.dedup();
    assert_eq!(fires.len(), runs.len(), "one row per fire");
    assert!(
        (2..=4).contains(&runs.len()),
        "about one fire per second over ~1.8s: {}",
        runs.len()
    );
    assert!(runs
        .iter()
        .all(|r| r.scheduled_for.timestamp_subsec_nanos() == 0));
}

async fn downtime_is_not_back_filled_beyond_the_latest_fire(c: ConfigDir) {
    c.job(
        "every-second",
        "kind = \"test.sleep\"\nschedule = \"* * * * * *\"\n",
    );
    let ctx = open(&c).await;
    // The last fire anyone enqueued was an hour ago: 3600 fires were missed.
    let hour_ago = Utc::now().with_timezone(&Utc) - chrono::Duration::hours(1);
    let old = NewRun {
        job: "every-second".into(),
        kind: "test.sleep".into(),
        scheduled_for: lethe::audit::truncate_micros(hour_ago),
        trigger: "schedule".into(),
        max_attempts: 1,
        timeout: Duration::from_secs(5),
        allow_overlap: false,
        dry_run: false,
        params: json!({}),
    };
    ctx.store.enqueue(&old).await.unwrap();
    let mut e = Enqueuer::new(ctx.clone()).await.unwrap();
    assert_eq!(
        e.tick().await.unwrap(),
        1,
        "only the latest missed fire is enqueued"
    );
    let runs = ctx
        .store
        .list_runs(&RunFilter {
            job: None,
            state: None,
            limit: 10_000,
        })
        .await
        .unwrap();
    assert_eq!(runs.len(), 2);
}

async fn catch_up_skip_waits_for_the_next_fire(c: ConfigDir) {
    // Fires at 00:00:00 only; at start that fire is in the past.
    c.job(
        "nightly",
        "kind = \"test.sleep\"\nschedule = \"0 0 0 * * *\"\ncatch_up = \"skip\"\n",
    );
    c.job(
        "nightly-latest",
        "kind = \"test.sleep\"\nschedule = \"0 0 0 * * *\"\n",
    );
    let ctx = open(&c).await;
    let mut e = Enqueuer::new(ctx.clone()).await.unwrap();
    assert_eq!(
        e.tick().await.unwrap(),
        1,
        "only the `latest` job catches up"
    );
    let runs = ctx
        .store
        .list_runs(&RunFilter {
            job: None,
            state: None,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(
        runs.iter().map(|r| r.job.as_str()).collect::<Vec<_>>(),
        vec!["nightly-latest"]
    );
}
