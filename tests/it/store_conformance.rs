//! One conformance suite for the worker store, run against both drivers
//! (River's riverdrivertest is the model): every case below exists once and
//! is instantiated for SQLite and for a real PostgreSQL.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{Duration as CDuration, Utc};
use lethe::store::{
    self, Backend, BackupRecord, Breach, BreachParty, DsrExtension, DsrInsert, DsrRequest,
    DsrState, HoldScope, LegalHold, MailState, NewAuditEvent, NewDsr, NewMail, NewRun, OrgDek,
    OrgKek, Outcome, RetentionOverride, RunFilter, RunState, Store,
};
use serde_json::json;

async fn sqlite_store() -> Option<(Arc<dyn Store>, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("lethe.db").display());
    let s = store::connect(&url, 4).await.unwrap();
    s.migrate().await.unwrap();
    Some((s, dir))
}

async fn pg_store() -> Option<(Arc<dyn Store>, tempfile::TempDir)> {
    let url = crate::common::fresh_pg_db().await?;
    let s = store::connect(&url, 10).await.unwrap();
    s.migrate().await.unwrap();
    // Migrating twice (a second replica starting) is a no-op.
    s.migrate().await.unwrap();
    Some((s, tempfile::tempdir().unwrap()))
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                if let Some((s, _keep)) = super::sqlite_store().await { super::$case(s).await }
            })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                if let Some((s, _keep)) = super::pg_store().await { super::$case(s).await }
            })*
        }
    };
}

conformance!(
    ledger_check_value_is_recorded_once,
    outbox_has_tells_whether_a_dedupe_key_was_queued,
    dsr_exports_are_listed_for_deletion_by_expiry_or_subject_once,
    dsr_forget_subject_replaces_the_email_everywhere_in_the_store,
    reports_migrated,
    enqueue_is_unique_per_job_and_fire,
    a_follow_up_is_queued_once_while_one_waits,
    claim_leases_heartbeats_and_finishes,
    future_runs_are_not_claimed,
    a_job_never_overlaps_itself_unless_allowed,
    retry_makes_run_claimable_again_with_next_attempt,
    only_lapsed_leases_are_rescued_and_only_once,
    claim_run_takes_one_given_run,
    concurrent_claimers_take_each_run_exactly_once,
    prune_deletes_only_old_finished_runs_in_batches,
    list_and_count_runs,
    audit_appends_form_one_chain_even_concurrently,
    outbox_dedupes_leases_retries_and_delivers,
    dsr_left_in_progress_by_a_crashed_run_is_taken_again,
    dsr_idempotency_key_replays_the_same_request_and_refuses_a_different_one,
    overrides_are_set_replaced_and_unset_with_evidence,
    holds_are_added_released_once_and_listed_with_evidence,
    backup_catalog_inserts_verifies_and_deletes_with_evidence,
    dsr_list_filters_by_state_newest_first,
    dsr_transition_moves_only_from_the_given_states,
    dsr_extend_moves_an_open_deadline_once_with_evidence,
    ledger_add_upserts_keys_with_evidence,
    keys_are_stored_rotated_rewrapped_and_destroyed_with_evidence,
    a_failed_change_appends_no_evidence,
    breaches_open_with_parties_and_record_each_notification_once,
    checkpoints_are_per_run_and_key_and_replaced,
    pending_object_deletes_are_per_origin_deferred_and_forgotten,
    dsr_import_keeps_the_recorded_timeline_with_evidence,
    org_requests_are_one_open_per_org_due_after_cooling_off_and_closed_once,
    dsr_open_requests_are_one_per_subject_kind_and_org_scope,
);

/// An org may ask about a subject while another org (or a request about
/// every org) is open for them; a second open request of the same scope is a
/// duplicate. One-org erasures are kept in the ledger per (subject, org).
async fn dsr_open_requests_are_one_per_subject_kind_and_org_scope(s: Arc<dyn Store>) {
    let scoped = |org: Option<&str>| {
        let mut r = keyed_dsr("m@x.example", "unused", None);
        r.idempotency_key = None;
        r.org = org.map(str::to_string);
        r
    };
    let mut ids = Vec::new();
    for org in [None, Some("1"), Some("2")] {
        let (what, id) = insert_outcome(s.dsr_insert(&scoped(org), &dsr_event).await.unwrap());
        assert_eq!(what, "created", "{org:?}");
        assert_eq!(s.dsr_get(id).await.unwrap().unwrap().org.as_deref(), org);
        ids.push(id);
    }
    for (org, first) in [(None, ids[0]), (Some("1"), ids[1]), (Some("2"), ids[2])] {
        assert_eq!(
            insert_outcome(s.dsr_insert(&scoped(org), &dsr_event).await.unwrap()),
            ("duplicate".into(), first),
            "{org:?}"
        );
    }
    s.ledger_add_org("k1", "2", ids[2], &ev("dsr.erased", "dsr:3"))
        .await
        .unwrap();
    s.ledger_add_org("k1", "2", ids[2], &ev("dsr.erased", "dsr:3"))
        .await
        .unwrap();
    s.ledger_add_org("k1", "1", ids[1], &ev("dsr.erased", "dsr:2"))
        .await
        .unwrap();
    assert_eq!(
        s.ledger_org_entries()
            .await
            .unwrap()
            .into_iter()
            .map(|(k, o, _)| (k, o))
            .collect::<Vec<_>>(),
        [
            ("k1".to_string(), "1".to_string()),
            ("k1".into(), "2".into())
        ]
    );
    assert!(
        s.ledger_keys().await.unwrap().is_empty(),
        "no whole-subject entry"
    );
}

/// One scheduled deletion per org (a second is refused with no evidence),
/// due only once its cooling-off ends, closed once.
async fn org_requests_are_one_open_per_org_due_after_cooling_off_and_closed_once(
    s: Arc<dyn Store>,
) {
    use lethe::store::OrgRequest;
    let now = lethe::audit::truncate_micros(Utc::now());
    let ask = |org: &str, after: i64| OrgRequest {
        id: 0,
        org: org.into(),
        kind: "deletion".into(),
        classes: json!(["events"]),
        reason: "contract ended".into(),
        contact: None,
        state: String::new(),
        requested_by: "cli:test".into(),
        requested_at: now,
        execute_after: now + CDuration::hours(after),
        due_at: now + CDuration::days(30),
        completed_at: None,
        result: None,
    };
    let before = s.audit_page(0, 10_000).await.unwrap().len();
    let event = |_: &i64| ev("org.deletion_requested", "org:7");
    let soon = s.org_request_insert(&ask("7", 0), &event).await.unwrap();
    let later = s.org_request_insert(&ask("8", 24), &event).await.unwrap();
    assert_eq!(soon.state, "scheduled");
    let again = s.org_request_insert(&ask("7", 0), &event).await;
    assert!(
        matches!(again, Err(lethe::error::Error::Refused(_))),
        "{again:?}"
    );
    assert_eq!(s.audit_page(0, 10_000).await.unwrap().len(), before + 2);
    let due = s
        .org_requests_due(now + CDuration::minutes(1))
        .await
        .unwrap();
    assert_eq!(due.iter().map(|r| r.id).collect::<Vec<_>>(), vec![soon.id]);
    assert_eq!(due[0].classes, json!(["events"]));
    assert_eq!(due[0].execute_after, now);
    let done = ev("org.deleted", "org:7");
    assert!(s
        .org_request_move(soon.id, "scheduled", "done", &json!({"rows": 3}), &done)
        .await
        .unwrap());
    assert!(!s
        .org_request_move(soon.id, "scheduled", "cancelled", &json!({}), &done)
        .await
        .unwrap());
    assert_eq!(s.audit_page(0, 10_000).await.unwrap().len(), before + 3);
    let mine = s.org_requests(Some("7")).await.unwrap();
    assert_eq!((mine.len(), mine[0].state.as_str()), (1, "done"));
    assert_eq!(mine[0].result, Some(json!({"rows": 3})));
    // Done, org 7 may ask again; org 8 is not due before its day.
    s.org_request_insert(&ask("7", 0), &event).await.unwrap();
    assert!(s
        .org_requests(None)
        .await
        .unwrap()
        .iter()
        .any(|r| r.id == later.id));
}

/// An imported request keeps its recorded times (not the store's now); an
/// open duplicate of an open request is refused and leaves no evidence.
async fn dsr_import_keeps_the_recorded_timeline_with_evidence(s: Arc<dyn Store>) {
    let now = lethe::audit::truncate_micros(Utc::now());
    let t = |days: i64| now - CDuration::days(days);
    let closed = lethe::store::ImportedDsr {
        request: lethe::store::NewDsr {
            kind: "export".into(),
            subject: "old@x.example".into(),
            org: None,
            jurisdiction: "gdpr".into(),
            state: DsrState::Completed,
            reason: None,
            detail: None,
            source: "import".into(),
            idempotency_key: None,
            request_hash: None,
            received_at: t(90),
            due_at: t(30),
            corrections: vec![],
        },
        extended_days: 30,
        extension_reason: Some("complex".into()),
        extended_at: Some(t(70)),
        extension_notified_at: Some(t(70)),
        completed_at: Some(t(40)),
        updated_at: t(40),
    };
    let got = s.dsr_import(&closed, &dsr_event).await.unwrap();
    let back = s.dsr_get(got.id).await.unwrap().unwrap();
    assert_eq!(
        (
            back.state,
            back.received_at,
            back.due_at,
            back.completed_at,
            back.updated_at
        ),
        (DsrState::Completed, t(90), t(30), Some(t(40)), t(40))
    );
    assert_eq!((back.extended_days, back.extended_at), (30, Some(t(70))));
    let open = lethe::store::ImportedDsr {
        request: lethe::store::NewDsr {
            state: DsrState::Received,
            ..closed.request.clone()
        },
        completed_at: None,
        ..closed.clone()
    };
    s.dsr_import(&open, &dsr_event).await.unwrap();
    let before = trail(&s).await.len();
    let err = s.dsr_import(&open, &dsr_event).await.unwrap_err();
    assert!(
        matches!(err, lethe::error::Error::Refused(_))
            && err.to_string().contains("exists already"),
        "a second open request of the same kind for the subject: {err}"
    );
    assert_eq!(
        trail(&s).await.len(),
        before,
        "no evidence for what was refused"
    );
}

/// Pending file deletes: listed per origin oldest first, a deferred one
/// hidden until its date, forgotten once done.
async fn pending_object_deletes_are_per_origin_deferred_and_forgotten(s: Arc<dyn Store>) {
    use lethe::store::NewPendingObject;
    let file = |key: &str| NewPendingObject {
        store_name: "docs".into(),
        table_name: "documents".into(),
        column_name: "storage_key".into(),
        object_key: key.into(),
        class: "statements".into(),
        org: "7".into(),
    };
    s.objects_pend("retention", &[file("a"), file("b")])
        .await
        .unwrap();
    s.objects_pend("dsr:1", &[file("c")]).await.unwrap();
    let now = Utc::now();
    let due = s.objects_due("retention", now, 10).await.unwrap();
    let keys = |d: &[lethe::store::PendingObject]| {
        d.iter().map(|p| p.object_key.clone()).collect::<Vec<_>>()
    };
    assert_eq!(keys(&due), ["a", "b"]);
    assert_eq!(
        keys(&s.objects_due("retention", now, 1).await.unwrap()),
        ["a"]
    );
    assert_eq!(due[0].org, "7");
    s.objects_defer(due[0].id, now + chrono::Duration::hours(2))
        .await
        .unwrap();
    assert_eq!(
        keys(&s.objects_due("retention", now, 10).await.unwrap()),
        ["b"]
    );
    let later = now + chrono::Duration::hours(3);
    assert_eq!(
        keys(&s.objects_due("retention", later, 10).await.unwrap()),
        ["a", "b"]
    );
    s.objects_done(&[due[0].id, due[1].id]).await.unwrap();
    assert!(s
        .objects_due("retention", later, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        keys(&s.objects_due("dsr:1", later, 10).await.unwrap()),
        ["c"]
    );
}

fn new_run(job: &str, at: chrono::DateTime<Utc>) -> NewRun {
    NewRun {
        job: job.into(),
        kind: "test.sleep".into(),
        scheduled_for: lethe::audit::truncate_micros(at),
        trigger: "schedule".into(),
        max_attempts: 3,
        timeout: Duration::from_secs(60),
        allow_overlap: false,
        dry_run: false,
        params: json!({"ms": 1}),
    }
}

fn past() -> chrono::DateTime<Utc> {
    Utc::now() - CDuration::seconds(5)
}

const LEASE: Duration = Duration::from_secs(30);

async fn reports_migrated(s: Arc<dyn Store>) {
    assert!(s.is_migrated().await.unwrap());
    s.ping().await.unwrap();
    let skew = (s.now().await.unwrap() - Utc::now()).num_seconds().abs();
    assert!(skew < 5, "store clock is {skew}s off");
}

async fn enqueue_is_unique_per_job_and_fire(s: Arc<dyn Store>) {
    let t = past();
    assert!(s.enqueue(&new_run("a", t)).await.unwrap().is_some());
    assert!(
        s.enqueue(&new_run("a", t)).await.unwrap().is_none(),
        "same fire twice must be one row"
    );
    assert!(
        s.enqueue(&new_run("b", t)).await.unwrap().is_some(),
        "another job, same time, is its own row"
    );
    assert_eq!(
        s.latest_scheduled_for("a").await.unwrap(),
        Some(lethe::audit::truncate_micros(t))
    );
    assert_eq!(s.latest_scheduled_for("nope").await.unwrap(), None);
}

/// A follow-up run is not queued while a run of its job waits unstarted
/// (a scheduled one or another follow-up); once that one is claimed, it is.
async fn a_follow_up_is_queued_once_while_one_waits(s: Arc<dyn Store>) {
    let t = past();
    let first = s.enqueue_follow_up(&new_run("anchor", t)).await.unwrap();
    assert!(first.is_some());
    let later = t + CDuration::seconds(1);
    assert_eq!(
        s.enqueue_follow_up(&new_run("anchor", later))
            .await
            .unwrap(),
        None,
        "one already waits"
    );
    let run = s.get_run(first.unwrap()).await.unwrap().unwrap();
    assert_eq!(run.trigger, "follow_up");
    assert!(s.enqueue(&new_run("other", later)).await.unwrap().is_some());
    assert!(
        s.enqueue_follow_up(&new_run("other", later + CDuration::seconds(1)))
            .await
            .unwrap()
            .is_none(),
        "a waiting scheduled run of the job counts too"
    );
    let claimed = s.claim_run(first.unwrap(), "w", LEASE).await.unwrap();
    assert!(claimed.is_some());
    assert!(
        s.enqueue_follow_up(&new_run("anchor", later))
            .await
            .unwrap()
            .is_some(),
        "the waiting one started: a new one is queued"
    );
}

async fn claim_leases_heartbeats_and_finishes(s: Arc<dyn Store>) {
    let id = s.enqueue(&new_run("a", past())).await.unwrap().unwrap();
    let run = s
        .claim_next("w1", LEASE)
        .await
        .unwrap()
        .expect("due run is claimed");
    assert_eq!((run.id, run.state, run.attempt), (id, RunState::Running, 1));
    assert_eq!(run.lease_owner.as_deref(), Some("w1"));
    assert!(run.lease_expires_at.unwrap() > Utc::now() + CDuration::seconds(20));
    assert!(
        s.claim_next("w2", LEASE).await.unwrap().is_none(),
        "a running run is not claimed again"
    );
    assert!(s.heartbeat(id, "w1", LEASE).await.unwrap());
    assert!(
        !s.heartbeat(id, "w2", LEASE).await.unwrap(),
        "only the owner renews"
    );
    let outcome = Outcome::Succeeded {
        result: json!({"n": 7}),
    };
    assert!(
        !s.finish(id, "w2", &outcome).await.unwrap(),
        "only the owner finishes"
    );
    assert!(s.finish(id, "w1", &outcome).await.unwrap());
    assert!(
        !s.finish(id, "w1", &outcome).await.unwrap(),
        "finishing twice is refused"
    );
    let done = s.get_run(id).await.unwrap().unwrap();
    assert_eq!(done.state, RunState::Succeeded);
    assert_eq!(done.result, Some(json!({"n": 7})));
    assert!(done.finished_at.is_some() && done.lease_owner.is_none());
}

async fn future_runs_are_not_claimed(s: Arc<dyn Store>) {
    s.enqueue(&new_run("a", Utc::now() + CDuration::hours(1)))
        .await
        .unwrap();
    assert!(s.claim_next("w1", LEASE).await.unwrap().is_none());
}

async fn a_job_never_overlaps_itself_unless_allowed(s: Arc<dyn Store>) {
    let t = past();
    s.enqueue(&new_run("a", t)).await.unwrap();
    s.enqueue(&new_run("a", t + CDuration::seconds(1)))
        .await
        .unwrap();
    let other = s
        .enqueue(&new_run("b", t + CDuration::seconds(2)))
        .await
        .unwrap()
        .unwrap();
    let first = s.claim_next("w1", LEASE).await.unwrap().unwrap();
    assert_eq!(first.job, "a");
    let second = s.claim_next("w2", LEASE).await.unwrap().unwrap();
    assert_eq!(
        second.id, other,
        "the second run of `a` waits; `b` goes ahead"
    );
    assert!(s.claim_next("w3", LEASE).await.unwrap().is_none());
    s.finish(first.id, "w1", &Outcome::Succeeded { result: json!({}) })
        .await
        .unwrap();
    let third = s.claim_next("w3", LEASE).await.unwrap().unwrap();
    assert_eq!(
        third.job, "a",
        "once the first ended, the next run of `a` is claimable"
    );

    let mut o1 = new_run("c", t);
    o1.allow_overlap = true;
    let mut o2 = new_run("c", t + CDuration::seconds(1));
    o2.allow_overlap = true;
    s.enqueue(&o1).await.unwrap();
    s.enqueue(&o2).await.unwrap();
    assert!(s.claim_next("w4", LEASE).await.unwrap().is_some());
    assert!(
        s.claim_next("w5", LEASE).await.unwrap().is_some(),
        "allow_overlap runs side by side"
    );
}

async fn retry_makes_run_claimable_again_with_next_attempt(s: Arc<dyn Store>) {
    let id = s.enqueue(&new_run("a", past())).await.unwrap().unwrap();
    s.claim_next("w1", LEASE).await.unwrap().unwrap();
    let later = Utc::now() + CDuration::hours(1);
    s.finish(
        id,
        "w1",
        &Outcome::Retry {
            error: "boom".into(),
            run_after: later,
        },
    )
    .await
    .unwrap();
    let r = s.get_run(id).await.unwrap().unwrap();
    assert_eq!(
        (r.state, r.error.as_deref()),
        (RunState::Retryable, Some("boom"))
    );
    assert!(
        s.claim_next("w1", LEASE).await.unwrap().is_none(),
        "not before run_after"
    );

    let id2 = s.enqueue(&new_run("b", past())).await.unwrap().unwrap();
    s.claim_next("w1", LEASE).await.unwrap().unwrap();
    s.finish(
        id2,
        "w1",
        &Outcome::Retry {
            error: "x".into(),
            run_after: past(),
        },
    )
    .await
    .unwrap();
    let again = s.claim_next("w2", LEASE).await.unwrap().unwrap();
    assert_eq!((again.id, again.attempt), (id2, 2));
    s.finish(
        id2,
        "w2",
        &Outcome::Dead {
            error: "gave up".into(),
        },
    )
    .await
    .unwrap();
    assert_eq!(s.get_run(id2).await.unwrap().unwrap().state, RunState::Dead);
}

async fn only_lapsed_leases_are_rescued_and_only_once(s: Arc<dyn Store>) {
    let live = s.enqueue(&new_run("live", past())).await.unwrap().unwrap();
    s.claim_next("w-live", LEASE).await.unwrap().unwrap();
    let dead = s.enqueue(&new_run("dead", past())).await.unwrap().unwrap();
    let claimed = s
        .claim_next("w-dead", Duration::from_millis(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.id, dead);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let expired: Vec<i64> = s
        .expired_leases()
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(expired, vec![dead]);
    let back = Outcome::Retry {
        error: "lease expired".into(),
        run_after: past(),
    };
    assert!(
        !s.rescue(live, "w-live", &back).await.unwrap(),
        "a live lease is not rescued"
    );
    assert!(!s.rescue(dead, "someone-else", &back).await.unwrap());
    assert!(s.rescue(dead, "w-dead", &back).await.unwrap());
    assert!(
        !s.rescue(dead, "w-dead", &back).await.unwrap(),
        "rescued once"
    );
    assert!(
        !s.heartbeat(dead, "w-dead", LEASE).await.unwrap(),
        "the old worker has lost it"
    );
    let r = s.claim_next("w2", LEASE).await.unwrap().unwrap();
    assert_eq!((r.id, r.attempt), (dead, 2));
}

async fn claim_run_takes_one_given_run(s: Arc<dyn Store>) {
    let a = s.enqueue(&new_run("a", past())).await.unwrap().unwrap();
    let b = s
        .enqueue(&new_run("b", past() - CDuration::seconds(1)))
        .await
        .unwrap()
        .unwrap();
    let r = s.claim_run(a, "cli", LEASE).await.unwrap().unwrap();
    assert_eq!(r.id, a, "claims the named run even though another is older");
    assert!(
        s.claim_run(a, "cli", LEASE).await.unwrap().is_none(),
        "not twice"
    );
    assert_eq!(
        s.get_run(b).await.unwrap().unwrap().state,
        RunState::Available
    );
    let a2 = s
        .enqueue(&new_run("a", past() + CDuration::seconds(1)))
        .await
        .unwrap()
        .unwrap();
    assert!(
        s.claim_run(a2, "cli", LEASE).await.unwrap().is_none(),
        "job `a` is already running"
    );
}

async fn concurrent_claimers_take_each_run_exactly_once(s: Arc<dyn Store>) {
    let t = past();
    for i in 0..60 {
        s.enqueue(&new_run(&format!("job{i}"), t)).await.unwrap();
    }
    let mut tasks = Vec::new();
    for w in 0..6 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            let owner = format!("w{w}");
            while let Some(r) = s.claim_next(&owner, LEASE).await.unwrap() {
                got.push(r.id);
                s.finish(r.id, &owner, &Outcome::Succeeded { result: json!({}) })
                    .await
                    .unwrap();
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), 60, "every run claimed");
    assert_eq!(unique.len(), 60, "no run claimed twice");
}

async fn prune_deletes_only_old_finished_runs_in_batches(s: Arc<dyn Store>) {
    for i in 0..3 {
        let id = s
            .enqueue(&new_run(&format!("old{i}"), past()))
            .await
            .unwrap()
            .unwrap();
        s.claim_run(id, "w", LEASE).await.unwrap().unwrap();
        s.finish(id, "w", &Outcome::Succeeded { result: json!({}) })
            .await
            .unwrap();
    }
    let running = s
        .enqueue(&new_run("running", past()))
        .await
        .unwrap()
        .unwrap();
    s.claim_run(running, "w", LEASE).await.unwrap().unwrap();
    let waiting = s
        .enqueue(&new_run("waiting", past()))
        .await
        .unwrap()
        .unwrap();

    let cutoff = Utc::now() + CDuration::seconds(1);
    assert_eq!(s.count_prunable(cutoff).await.unwrap(), 3);
    assert_eq!(
        s.count_prunable(Utc::now() - CDuration::hours(1))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        s.prune_runs(cutoff, 2).await.unwrap(),
        2,
        "one batch at most"
    );
    assert_eq!(s.prune_runs(cutoff, 2).await.unwrap(), 1);
    assert_eq!(s.prune_runs(cutoff, 2).await.unwrap(), 0);
    assert!(s.get_run(running).await.unwrap().is_some());
    assert!(s.get_run(waiting).await.unwrap().is_some());
}

async fn list_and_count_runs(s: Arc<dyn Store>) {
    for i in 0..3 {
        s.enqueue(&new_run("a", past() + CDuration::seconds(i)))
            .await
            .unwrap();
    }
    s.enqueue(&new_run("b", past())).await.unwrap();
    let a = s
        .list_runs(&RunFilter {
            job: Some("a".into()),
            state: None,
            limit: 2,
        })
        .await
        .unwrap();
    assert_eq!(a.len(), 2);
    assert!(a[0].id > a[1].id, "newest first");
    let all = s
        .list_runs(&RunFilter {
            job: None,
            state: Some(RunState::Available),
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 4);
    let counts = s.run_counts().await.unwrap();
    let a_avail = counts
        .iter()
        .find(|c| c.job == "a" && c.state == RunState::Available)
        .unwrap();
    assert_eq!(a_avail.count, 3);
}

async fn audit_appends_form_one_chain_even_concurrently(s: Arc<dyn Store>) {
    assert!(
        s.audit_head().await.unwrap().is_none(),
        "an empty chain has no head"
    );
    let mut tasks = Vec::new();
    for i in 0..24 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.append_audit(&NewAuditEvent {
                actor: format!("t{i}"),
                action: "test.event".into(),
                target: "x".into(),
                details: json!({"i": i, "nested": {"z": 1, "a": [1, 2.5, "s"]}}),
            })
            .await
            .unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let page1 = s.audit_page(0, 10).await.unwrap();
    let page2 = s.audit_page(10, 100).await.unwrap();
    assert_eq!((page1.len(), page2.len()), (10, 14));
    let seqs: Vec<i64> = page1.iter().chain(page2.iter()).map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=24).collect::<Vec<_>>());
    let head = s.audit_head().await.unwrap().expect("head");
    assert_eq!(
        (head.seq, &head.hash),
        (24, &page2[13].hash),
        "the head is the newest event"
    );
    // The exported chain verifies: every link and hash as the store wrote it.
    let mut buf = Vec::new();
    assert_eq!(
        lethe::audit::export(s.as_ref(), &mut buf, None)
            .await
            .unwrap(),
        24
    );
    let report = lethe::audit::verify(std::io::Cursor::new(buf), None).unwrap();
    assert!(report.ok, "{:?}", report.problem);
    assert_eq!(report.events, 24);
}

async fn outbox_dedupes_leases_retries_and_delivers(s: Arc<dyn Store>) {
    let mail = NewMail {
        dedupe_key: Some("k1".into()),
        recipients: vec!["ops@test.example".into()],
        subject: "s".into(),
        text: "t".into(),
        html: "<p>t</p>".into(),
        attachments: vec![],
        secret: false,
    };
    let (id, created) = s.outbox_enqueue(&mail).await.unwrap();
    assert!(created);
    assert_eq!(
        s.outbox_enqueue(&mail).await.unwrap(),
        (id, false),
        "same dedupe key, same message"
    );
    let claimed = s.outbox_claim("w1", 10, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].state, MailState::Sending);
    assert!(
        s.outbox_claim("w2", 10, LEASE).await.unwrap().is_empty(),
        "leased mail is not claimed twice"
    );
    assert!(s
        .outbox_failed(id, "w1", "smtp down", Some(past()))
        .await
        .unwrap());
    let again = s.outbox_claim("w2", 10, LEASE).await.unwrap();
    assert_eq!((again.len(), again[0].attempts), (1, 1));
    assert_eq!(again[0].recipients, vec!["ops@test.example".to_string()]);
    assert!(
        !s.outbox_sent(id, "w1").await.unwrap(),
        "the old claimer cannot mark it"
    );
    assert!(s.outbox_sent(id, "w2").await.unwrap());
    assert!(
        s.outbox_claim("w3", 10, LEASE).await.unwrap().is_empty(),
        "sent mail is not sent again"
    );

    let mut m2 = mail.clone();
    m2.dedupe_key = None;
    let (id2, _) = s.outbox_enqueue(&m2).await.unwrap();
    s.outbox_claim("w1", 10, LEASE).await.unwrap();
    s.outbox_failed(id2, "w1", "rejected", None).await.unwrap();
    // A secret's body is wiped once delivered, and only a secret's.
    let secret = NewMail {
        dedupe_key: Some("k-secret".into()),
        secret: true,
        ..mail.clone()
    };
    let (id3, _) = s.outbox_enqueue(&secret).await.unwrap();
    s.outbox_claim("w1", 10, LEASE).await.unwrap();
    assert!(s.outbox_sent(id3, "w1").await.unwrap());
    let listed = s.outbox_list(10).await.unwrap();
    let by_id = |i| listed.iter().find(|m| m.id == i).unwrap();
    assert_eq!(
        (by_id(id3).text.as_str(), by_id(id3).html.as_str()),
        (lethe::store::WIPED_BODY, lethe::store::WIPED_BODY)
    );
    assert_eq!(by_id(id).text, "t", "a plain mail keeps its body");
    assert_eq!(by_id(id).state, MailState::Sent);
    assert_eq!(by_id(id2).state, MailState::Failed);
    assert_eq!(by_id(id2).last_error.as_deref(), Some("rejected"));

    // A sender that died mid-send: its lease lapses and another sender takes the mail.
    let (id3, _) = s
        .outbox_enqueue(&NewMail {
            dedupe_key: Some("k3".into()),
            ..mail.clone()
        })
        .await
        .unwrap();
    s.outbox_claim("w-dies", 10, Duration::from_millis(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let taken = s.outbox_claim("w-next", 10, LEASE).await.unwrap();
    assert_eq!(taken.iter().map(|m| m.id).collect::<Vec<_>>(), vec![id3]);
}

/// The audit table rejects UPDATE and DELETE at the database, not just in code.
#[tokio::test]
async fn postgres_audit_table_is_append_only() {
    let Some(url) = crate::common::fresh_pg_db().await else {
        return;
    };
    let s = store::connect(&url, 2).await.unwrap();
    s.migrate().await.unwrap();
    lethe::audit::record(s.as_ref(), "t", "x", "y", json!({}))
        .await
        .unwrap();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    for sql in [
        "UPDATE lethe.audit_events SET actor = 'mallory'",
        "DELETE FROM lethe.audit_events",
        "TRUNCATE lethe.audit_events",
    ] {
        let err = sqlx::query(sql).execute(&pool).await.expect_err(sql);
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
}

#[tokio::test]
async fn sqlite_audit_table_is_append_only() {
    let (s, dir) = sqlite_store().await.unwrap();
    lethe::audit::record(s.as_ref(), "t", "x", "y", json!({}))
        .await
        .unwrap();
    let pool = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        dir.path().join("lethe.db").display()
    ))
    .await
    .unwrap();
    for sql in [
        "UPDATE audit_events SET actor = 'mallory'",
        "DELETE FROM audit_events",
    ] {
        let err = sqlx::query(sql).execute(&pool).await.expect_err(sql);
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
}

async fn dsr_left_in_progress_by_a_crashed_run_is_taken_again(s: Arc<dyn Store>) {
    let new = lethe::store::NewDsr {
        kind: "erasure".into(),
        subject: "a@x.example".into(),
        org: None,
        jurisdiction: "gdpr".into(),
        state: lethe::store::DsrState::Verified,
        reason: None,
        detail: None,
        source: "cli".into(),
        idempotency_key: None,
        request_hash: None,
        received_at: Utc::now(),
        due_at: Utc::now() + CDuration::days(30),
        corrections: vec![],
    };
    let lethe::store::DsrInsert::Created(req) = s.dsr_insert(&new, &dsr_event).await.unwrap()
    else {
        panic!("not created");
    };
    let a = s.enqueue(&new_run("dsr-a", past())).await.unwrap().unwrap();
    let b = s.enqueue(&new_run("dsr-b", past())).await.unwrap().unwrap();
    s.claim_run(a, "w1", LEASE).await.unwrap().unwrap();
    s.claim_run(b, "w2", LEASE).await.unwrap().unwrap();
    assert_eq!(s.dsr_due(10, a).await.unwrap().len(), 1);
    assert!(s.dsr_claim(req.id, a).await.unwrap());
    assert!(
        !s.dsr_claim(req.id, b).await.unwrap(),
        "run a is running: b may not take its request"
    );
    assert!(s.dsr_due(10, b).await.unwrap().is_empty());
    assert!(
        s.dsr_claim(req.id, a).await.unwrap(),
        "a later attempt of run a takes it again"
    );
    // Run a dies without finishing the request: b may take it now.
    s.finish(
        a,
        "w1",
        &lethe::store::Outcome::Dead {
            error: "killed".into(),
        },
    )
    .await
    .unwrap();
    assert_eq!(s.dsr_due(10, b).await.unwrap().len(), 1);
    assert!(s.dsr_claim(req.id, b).await.unwrap());
    let got = s.dsr_get(req.id).await.unwrap().unwrap();
    assert_eq!(got.state, lethe::store::DsrState::InProgress);
    assert_eq!(got.attempts, 3);
}

fn keyed_dsr(subject: &str, key: &str, hash: Option<&str>) -> lethe::store::NewDsr {
    lethe::store::NewDsr {
        kind: "erasure".into(),
        subject: subject.into(),
        org: None,
        jurisdiction: "gdpr".into(),
        state: lethe::store::DsrState::Verified,
        reason: None,
        detail: None,
        source: "api".into(),
        idempotency_key: Some(key.into()),
        request_hash: hash.map(str::to_string),
        received_at: Utc::now(),
        due_at: Utc::now() + CDuration::days(30),
        corrections: vec![],
    }
}

/// "created", "replayed:ID", "conflict:ID" or "duplicate:ID".
fn insert_outcome(i: lethe::store::DsrInsert) -> (String, i64) {
    use lethe::store::DsrInsert::*;
    match i {
        Created(r) => ("created".into(), r.id),
        Replayed(r) => ("replayed".into(), r.id),
        KeyConflict(r) => ("conflict".into(), r.id),
        Duplicate(r) => ("duplicate".into(), r.id),
    }
}

async fn dsr_idempotency_key_replays_the_same_request_and_refuses_a_different_one(
    s: Arc<dyn Store>,
) {
    let first = keyed_dsr("a@x.example", "k1", Some("sha256:aa"));
    let (what, id) = insert_outcome(s.dsr_insert(&first, &dsr_event).await.unwrap());
    assert_eq!(what, "created");
    assert_eq!(
        insert_outcome(s.dsr_insert(&first, &dsr_event).await.unwrap()),
        ("replayed".into(), id),
        "same key, same request: the first request"
    );
    assert_eq!(
        insert_outcome(
            s.dsr_insert(
                &keyed_dsr("b@x.example", "k1", Some("sha256:bb")),
                &dsr_event
            )
            .await
            .unwrap()
        ),
        ("conflict".into(), id),
        "same key, different request: a conflict, not the first request"
    );
    // The same fields hashed under another scheme (the pseudonym key was
    // configured in between) compare by fields.
    assert_eq!(
        insert_outcome(
            s.dsr_insert(
                &keyed_dsr("a@x.example", "k1", Some("hmac-sha256:cc")),
                &dsr_event
            )
            .await
            .unwrap()
        )
        .0,
        "replayed"
    );
    // A row from before request hashes: compared by its fields.
    let (_, legacy) = insert_outcome(
        s.dsr_insert(&keyed_dsr("c@x.example", "k-old", None), &dsr_event)
            .await
            .unwrap(),
    );
    assert_eq!(
        insert_outcome(
            s.dsr_insert(
                &keyed_dsr("c@x.example", "k-old", Some("sha256:cc")),
                &dsr_event
            )
            .await
            .unwrap()
        ),
        ("replayed".into(), legacy)
    );
    let mut other = keyed_dsr("c@x.example", "k-old", Some("sha256:cc"));
    other.kind = "export".into();
    assert_eq!(
        insert_outcome(s.dsr_insert(&other, &dsr_event).await.unwrap()).0,
        "conflict"
    );

    // Racing inserts under one key: one request; a racing different request is refused.
    for round in 0..5 {
        let key = format!("race-{round}");
        let same = keyed_dsr(&format!("same{round}@x.example"), &key, Some("sha256:11"));
        let diff = keyed_dsr(&format!("diff{round}@x.example"), &key, Some("sha256:22"));
        let (s1, s2, s3) = (s.clone(), s.clone(), s.clone());
        let (a, b, c) = (same.clone(), same.clone(), diff);
        let (ra, rb, rc) = tokio::join!(
            tokio::spawn(async move { s1.dsr_insert(&a, &dsr_event).await.unwrap() }),
            tokio::spawn(async move { s2.dsr_insert(&b, &dsr_event).await.unwrap() }),
            tokio::spawn(async move { s3.dsr_insert(&c, &dsr_event).await.unwrap() }),
        );
        let mut got: Vec<String> = [ra, rb, rc]
            .into_iter()
            .map(|r| insert_outcome(r.unwrap()).0)
            .collect();
        got.sort();
        // Whichever body wins, exactly one row exists under the key.
        assert!(
            got == ["conflict", "created", "replayed"]
                || got == ["conflict", "conflict", "created"],
            "round {round}: {got:?}"
        );
    }
}

async fn ledger_check_value_is_recorded_once(s: Arc<dyn Store>) {
    assert_eq!(s.ledger_check().await.unwrap(), None);
    assert_eq!(s.ledger_check_init("first").await.unwrap(), "first");
    // A second key never replaces the first: the caller sees the stored value and refuses.
    assert_eq!(s.ledger_check_init("second").await.unwrap(), "first");
    assert_eq!(s.ledger_check().await.unwrap().as_deref(), Some("first"));
}

/// A verified request of `kind` for `subject`, received now.
async fn dsr_of(s: &Arc<dyn Store>, kind: &str, subject: &str) -> i64 {
    let now = s.now().await.unwrap();
    let new = NewDsr {
        kind: kind.into(),
        subject: subject.into(),
        org: None,
        jurisdiction: "gdpr".into(),
        state: DsrState::Verified,
        reason: None,
        detail: Some(format!("about {subject}")),
        source: "cli".into(),
        idempotency_key: None,
        request_hash: Some("sha256:00".into()),
        received_at: now,
        due_at: now + chrono::Duration::days(30),
        corrections: vec![],
    };
    match s.dsr_insert(&new, &dsr_event).await.unwrap() {
        DsrInsert::Created(r) => r.id,
        _ => panic!("not created"),
    }
}

async fn dsr_exports_are_listed_for_deletion_by_expiry_or_subject_once(s: Arc<dyn Store>) {
    let now = s.now().await.unwrap();
    let old = dsr_of(&s, "export", "old@x.example").await;
    let fresh = dsr_of(&s, "export", "fresh@x.example").await;
    let never = dsr_of(&s, "export", "never@x.example").await;
    s.dsr_export_started(old, ("exports/old", None), now - chrono::Duration::hours(1))
        .await
        .unwrap();
    s.dsr_export_started(
        fresh,
        ("exports/fresh", Some("exports/fresh-subject.zip")),
        now + chrono::Duration::days(7),
    )
    .await
    .unwrap();
    let due = s.dsr_exports_to_delete(now, None).await.unwrap();
    assert_eq!(
        due,
        vec![(old, "exports/old".to_string(), None)],
        "only the expired one"
    );
    let of = s
        .dsr_exports_to_delete(now, Some("fresh@x.example"))
        .await
        .unwrap();
    assert_eq!(
        of,
        vec![(
            fresh,
            "exports/fresh".to_string(),
            Some("exports/fresh-subject.zip".to_string())
        )],
        "the subject's, expired or not"
    );
    assert!(
        s.dsr_exports_to_delete(now, Some("never@x.example"))
            .await
            .unwrap()
            .is_empty(),
        "request {never} stored no archive"
    );
    s.dsr_export_deleted(old, &ev("dsr.export_deleted", "dsr"))
        .await
        .unwrap();
    assert!(
        s.dsr_exports_to_delete(now, None).await.unwrap().is_empty(),
        "deleted once"
    );
}

async fn dsr_forget_subject_replaces_the_email_everywhere_in_the_store(s: Arc<dyn Store>) {
    let email = "gone@x.example";
    let export = dsr_of(&s, "export", email).await;
    let erasure = dsr_of(&s, "erasure", email).await;
    let other = dsr_of(&s, "export", "stays@x.example").await;
    let released = s
        .hold_add(HoldScope::Subject, email, "audit", "cli:test", &hold_event)
        .await
        .unwrap();
    assert!(s
        .hold_release(
            released.id,
            "done",
            "cli:test",
            &ev("hold.released", "hold")
        )
        .await
        .unwrap());
    // A hold added meanwhile must keep matching the email.
    let active = s
        .hold_add(
            HoldScope::Subject,
            email,
            "new matter",
            "cli:test",
            &hold_event,
        )
        .await
        .unwrap();
    s.dsr_transition(
        erasure,
        &[DsrState::Verified],
        DsrState::Completed,
        None,
        None,
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        s.dsr_unforgotten_erasures().await.unwrap(),
        vec![email.to_string()]
    );
    let changed = s.dsr_forget_subject(email, "pseudonym:abc").await.unwrap();
    assert_eq!(changed, 3, "two requests and the released hold");
    for id in [export, erasure] {
        let r = s.dsr_get(id).await.unwrap().unwrap();
        assert_eq!(r.subject, "pseudonym:abc");
        assert_eq!(r.detail.as_deref(), Some("about pseudonym:abc"));
        assert_eq!(r.request_hash, None, "no hash of the email is kept");
    }
    assert_eq!(
        s.dsr_get(other).await.unwrap().unwrap().subject,
        "stays@x.example"
    );
    let holds = s.holds(true).await.unwrap();
    let value = |id: i64| holds.iter().find(|h| h.id == id).unwrap().value.clone();
    assert_eq!(value(released.id), "pseudonym:abc");
    assert_eq!(
        value(active.id),
        email,
        "an active hold still names whom it holds"
    );
    assert!(s.dsr_unforgotten_erasures().await.unwrap().is_empty());
}

async fn outbox_has_tells_whether_a_dedupe_key_was_queued(s: Arc<dyn Store>) {
    assert!(!s.outbox_has("rpo:b1").await.unwrap());
    let mail = NewMail {
        dedupe_key: Some("rpo:b1".into()),
        recipients: vec!["ops@x.example".into()],
        subject: "s".into(),
        text: "t".into(),
        html: "<p>t</p>".into(),
        attachments: vec![],
        secret: false,
    };
    s.outbox_enqueue(&mail).await.unwrap();
    assert!(s.outbox_has("rpo:b1").await.unwrap());
    assert!(!s.outbox_has("rpo:b2").await.unwrap());
}

#[tokio::test]
async fn sqlite_backend_is_named() {
    let (s, _keep) = sqlite_store().await.unwrap();
    assert_eq!(s.backend(), Backend::Sqlite);
}

#[tokio::test]
async fn postgres_backend_is_named() {
    if let Some((s, _keep)) = pg_store().await {
        assert_eq!(s.backend(), Backend::Postgres);
    }
}

fn ev(action: &str, target: &str) -> NewAuditEvent {
    store::evidence("cli:test", action, target, json!({"n": 1}))
}

fn dsr_event(r: &DsrRequest) -> NewAuditEvent {
    store::evidence(
        "cli:test",
        "dsr.received",
        &format!("dsr:{}", r.id),
        json!({}),
    )
}

fn hold_event(h: &LegalHold) -> NewAuditEvent {
    store::evidence(
        "cli:test",
        "hold.added",
        &format!("hold:{}", h.id),
        json!({"hold_id": h.id}),
    )
}

/// `(action, target)` of every audit event, in chain order.
async fn trail(s: &Arc<dyn Store>) -> Vec<(String, String)> {
    s.audit_page(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.action, e.target))
        .collect()
}

fn pair(a: &str, t: &str) -> (String, String) {
    (a.to_string(), t.to_string())
}

async fn overrides_are_set_replaced_and_unset_with_evidence(s: Arc<dyn Store>) {
    assert!(s.overrides().await.unwrap().is_empty());
    let mut o = RetentionOverride {
        class: "events".into(),
        org: "7".into(),
        period: "30d".into(),
        reason: "contract".into(),
        set_by: "cli:test".into(),
        set_at: lethe::audit::truncate_micros(Utc::now()),
    };
    s.override_set(&o, &ev("retention.override_set", "org:7"))
        .await
        .unwrap();
    o.period = "2y".into();
    s.override_set(&o, &ev("retention.override_set", "org:7"))
        .await
        .unwrap();
    let got = s.overrides().await.unwrap();
    assert_eq!(got.len(), 1, "(class, org) is replaced, not added");
    assert_eq!((got[0].period.as_str(), got[0].set_at), ("2y", o.set_at));
    assert!(s
        .override_unset("events", "7", &ev("retention.override_unset", "org:7"))
        .await
        .unwrap());
    assert!(
        !s.override_unset("events", "7", &ev("retention.override_unset", "org:7"))
            .await
            .unwrap(),
        "nothing left to unset"
    );
    assert!(s.overrides().await.unwrap().is_empty());
    assert_eq!(
        trail(&s).await,
        vec![
            pair("retention.override_set", "org:7"),
            pair("retention.override_set", "org:7"),
            pair("retention.override_unset", "org:7"),
        ],
        "one event per change, none for the unset that changed nothing"
    );
}

async fn holds_are_added_released_once_and_listed_with_evidence(s: Arc<dyn Store>) {
    let h = s
        .hold_add(HoldScope::Org, "42", "litigation", "cli:a", &hold_event)
        .await
        .unwrap();
    assert_eq!(
        (h.scope, h.value.as_str(), h.created_by.as_str()),
        (HoldScope::Org, "42", "cli:a")
    );
    assert!(h.released_at.is_none());
    let events = s.audit_page(0, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0].target,
        format!("hold:{}", h.id),
        "built from the new row"
    );
    assert_eq!(s.holds(false).await.unwrap().len(), 1);
    assert!(s
        .hold_release(h.id, "settled", "cli:b", &ev("hold.released", "hold"))
        .await
        .unwrap());
    assert!(
        !s.hold_release(h.id, "again", "cli:b", &ev("hold.released", "hold"))
            .await
            .unwrap(),
        "a released hold is not released twice"
    );
    assert!(!s
        .hold_release(h.id + 100, "none", "cli:b", &ev("hold.released", "hold"))
        .await
        .unwrap());
    assert!(s.holds(false).await.unwrap().is_empty());
    let all = s.holds(true).await.unwrap();
    assert_eq!(all.len(), 1);
    assert!(all[0].released_at.is_some());
    assert_eq!(all[0].released_by.as_deref(), Some("cli:b"));
    assert_eq!(all[0].release_reason.as_deref(), Some("settled"));
    assert_eq!(s.audit_page(0, 10).await.unwrap().len(), 2);
}

fn backup(id: &str, at: chrono::DateTime<Utc>) -> BackupRecord {
    BackupRecord {
        id: id.into(),
        created_at: lethe::audit::truncate_micros(at),
        run_id: Some(9),
        object_key: format!("backups/{id}.tar.zst.age"),
        manifest_key: format!("backups/{id}.json"),
        stored_bytes: 10,
        raw_bytes: 40,
        sha256: "ab".repeat(32),
        manifest: json!({"row_counts": {"users": 3}}),
        verified_at: None,
        verify_ok: None,
        restore_ms: None,
        verify_error: None,
        deleted_at: None,
    }
}

async fn backup_catalog_inserts_verifies_and_deletes_with_evidence(s: Arc<dyn Store>) {
    let old = backup("b-old", Utc::now() - CDuration::hours(2));
    s.backup_insert(&old, &ev("backup.created", "backup:b-old"))
        .await
        .unwrap();
    s.backup_insert(
        &backup("b-new", Utc::now()),
        &ev("backup.created", "backup:b-new"),
    )
    .await
    .unwrap();
    let all = s.backups(false).await.unwrap();
    let ids: Vec<&str> = all.iter().map(|b| b.id.as_str()).collect();
    assert_eq!(ids, ["b-new", "b-old"], "newest first");
    let got = all.iter().find(|b| b.id == "b-old").unwrap();
    assert_eq!(
        (got.created_at, &got.manifest, got.run_id),
        (old.created_at, &old.manifest, Some(9))
    );
    assert_eq!((got.verified_at, got.verify_ok), (None, None));
    s.backup_verified(
        "b-old",
        false,
        Some(12),
        Some("count mismatch"),
        &ev("backup.verify_failed", "backup:b-old"),
    )
    .await
    .unwrap();
    s.backup_verified(
        "b-new",
        true,
        Some(5),
        None,
        &ev("backup.verified", "backup:b-new"),
    )
    .await
    .unwrap();
    let all = s.backups(false).await.unwrap();
    let get = |id: &str| all.iter().find(|b| b.id == id).unwrap().clone();
    let (o, n) = (get("b-old"), get("b-new"));
    assert_eq!((o.verify_ok, o.restore_ms), (Some(false), Some(12)));
    assert_eq!(o.verify_error.as_deref(), Some("count mismatch"));
    assert!(o.verified_at.is_some());
    assert_eq!((n.verify_ok, n.verify_error), (Some(true), None));
    s.backup_deleted("b-old", &ev("backup.pruned", "backup:b-old"))
        .await
        .unwrap();
    assert_eq!(s.backups(false).await.unwrap().len(), 1);
    let with_deleted = s.backups(true).await.unwrap();
    assert_eq!(with_deleted.len(), 2);
    assert!(with_deleted
        .iter()
        .any(|b| b.id == "b-old" && b.deleted_at.is_some()));
    let actions: Vec<String> = trail(&s).await.into_iter().map(|t| t.0).collect();
    assert_eq!(
        actions,
        [
            "backup.created",
            "backup.created",
            "backup.verify_failed",
            "backup.verified",
            "backup.pruned"
        ]
    );
}

async fn dsr_list_filters_by_state_newest_first(s: Arc<dyn Store>) {
    let a = dsr_of(&s, "export", "a@x.example").await;
    let b = dsr_of(&s, "export", "b@x.example").await;
    let c = dsr_of(&s, "erasure", "c@x.example").await;
    assert!(s
        .dsr_transition(
            b,
            &[DsrState::Verified],
            DsrState::Rejected,
            Some("no"),
            None,
            None
        )
        .await
        .unwrap());
    let ids = |v: Vec<DsrRequest>| v.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(ids(s.dsr_list(None, 10).await.unwrap()), [c, b, a]);
    assert_eq!(ids(s.dsr_list(None, 2).await.unwrap()), [c, b]);
    assert_eq!(
        ids(s.dsr_list(Some(DsrState::Rejected), 10).await.unwrap()),
        [b]
    );
    assert_eq!(
        ids(s.dsr_list(Some(DsrState::Verified), 10).await.unwrap()),
        [c, a]
    );
    assert!(s
        .dsr_list(Some(DsrState::Failed), 10)
        .await
        .unwrap()
        .is_empty());
}

async fn dsr_transition_moves_only_from_the_given_states(s: Arc<dyn Store>) {
    let id = dsr_of(&s, "export", "t@x.example").await;
    let event = ev("dsr.rejected", &format!("dsr:{id}"));
    assert!(
        !s.dsr_transition(
            id,
            &[DsrState::InProgress, DsrState::Failed],
            DsrState::Rejected,
            Some("x"),
            None,
            Some(&event)
        )
        .await
        .unwrap(),
        "not in a from state: unchanged"
    );
    assert!(
        trail(&s).await.iter().all(|t| t.0 != "dsr.rejected"),
        "and no evidence"
    );
    let result = json!({"rows": 3});
    assert!(s
        .dsr_transition(
            id,
            &[DsrState::Received, DsrState::Verified],
            DsrState::Completed,
            None,
            Some(&result),
            Some(&event)
        )
        .await
        .unwrap());
    let r = s.dsr_get(id).await.unwrap().unwrap();
    assert_eq!(r.state, DsrState::Completed);
    assert_eq!(r.result, Some(result));
    assert!(r.completed_at.is_some());
    assert_eq!(
        trail(&s).await.last().unwrap(),
        &pair("dsr.rejected", &format!("dsr:{id}"))
    );
    assert!(s.dsr_get(id + 1000).await.unwrap().is_none());
}

async fn dsr_extend_moves_an_open_deadline_once_with_evidence(s: Arc<dyn Store>) {
    let id = dsr_of(&s, "export", "e@x.example").await;
    let r = s.dsr_get(id).await.unwrap().unwrap();
    let now = lethe::audit::truncate_micros(Utc::now());
    let ext = DsrExtension {
        from_due_at: r.due_at,
        due_at: r.due_at + CDuration::days(60),
        days: 60,
        reason: "complex".into(),
        extended_at: now,
        notified_at: now,
    };
    let event = ev("dsr.extended", &format!("dsr:{id}"));
    assert!(s.dsr_extend(id, &ext, &event).await.unwrap());
    let got = s.dsr_get(id).await.unwrap().unwrap();
    assert_eq!((got.due_at, got.extended_days), (ext.due_at, 60));
    assert_eq!(got.extension_reason.as_deref(), Some("complex"));
    assert_eq!(
        (got.extended_at, got.extension_notified_at),
        (Some(now), Some(now))
    );
    assert!(
        !s.dsr_extend(id, &ext, &event).await.unwrap(),
        "the deadline it replaces is no longer in force"
    );
    let closed = dsr_of(&s, "erasure", "e@x.example").await;
    let c = s.dsr_get(closed).await.unwrap().unwrap();
    s.dsr_transition(
        closed,
        &[DsrState::Verified],
        DsrState::Completed,
        None,
        None,
        None,
    )
    .await
    .unwrap();
    let late = DsrExtension {
        from_due_at: c.due_at,
        ..ext.clone()
    };
    assert!(
        !s.dsr_extend(closed, &late, &event).await.unwrap(),
        "closed requests keep their deadline"
    );
    let passed = DsrExtension {
        from_due_at: ext.due_at,
        extended_at: ext.due_at + CDuration::days(1),
        ..ext
    };
    assert!(
        !s.dsr_extend(id, &passed, &event).await.unwrap(),
        "a passed deadline is not extended"
    );
    let n = trail(&s)
        .await
        .iter()
        .filter(|t| t.0 == "dsr.extended")
        .count();
    assert_eq!(n, 1, "evidence only for the extension that happened");
}

async fn ledger_add_upserts_keys_with_evidence(s: Arc<dyn Store>) {
    assert!(s.ledger_keys().await.unwrap().is_empty());
    s.ledger_add("k2", 1, &ev("dsr.erased", "dsr:1"))
        .await
        .unwrap();
    s.ledger_add("k1", 2, &ev("dsr.erased", "dsr:2"))
        .await
        .unwrap();
    s.ledger_add("k1", 3, &ev("dsr.erased", "dsr:3"))
        .await
        .unwrap();
    assert_eq!(
        s.ledger_keys().await.unwrap(),
        ["k1", "k2"],
        "sorted, one per subject key"
    );
    assert_eq!(
        trail(&s).await,
        vec![
            pair("dsr.erased", "dsr:1"),
            pair("dsr.erased", "dsr:2"),
            pair("dsr.erased", "dsr:3")
        ]
    );
}

fn dek(org: &str, version: i32, kek_version: &str) -> OrgDek {
    OrgDek {
        org: org.into(),
        version,
        kek_id: format!("kek-{org}"),
        kek_version: kek_version.into(),
        wrapped: format!("w-{org}-{version}"),
        created_at: lethe::audit::truncate_micros(Utc::now()),
        rewrapped_at: None,
    }
}

async fn keys_are_stored_rotated_rewrapped_and_destroyed_with_evidence(s: Arc<dyn Store>) {
    assert!(s.keks().await.unwrap().is_empty());
    let t0 = lethe::audit::truncate_micros(Utc::now() - CDuration::days(1));
    let mut kek = OrgKek {
        org: "a".into(),
        kek_id: "kek-a".into(),
        rotated_at: t0,
        shredded_at: None,
        shred_postponed: None,
    };
    s.kek_put(&kek, None).await.unwrap();
    assert!(
        trail(&s).await.is_empty(),
        "creating a key has no evidence of its own"
    );
    kek.rotated_at = lethe::audit::truncate_micros(Utc::now());
    s.kek_put(&kek, Some(&ev("keys.kek_rotated", "org:a")))
        .await
        .unwrap();
    let keks = s.keks().await.unwrap();
    assert_eq!(keks.len(), 1, "one row per org");
    assert_eq!(
        (keks[0].rotated_at, keks[0].shredded_at),
        (kek.rotated_at, None)
    );
    for d in [dek("b", 1, "v1"), dek("a", 2, "v1"), dek("a", 1, "v1")] {
        s.dek_insert(&d, &ev("keys.dek_rotated", "org"))
            .await
            .unwrap();
    }
    let all = s.deks(None).await.unwrap();
    let keys: Vec<(String, i32)> = all.iter().map(|d| (d.org.clone(), d.version)).collect();
    assert_eq!(keys, [("a".into(), 1), ("a".into(), 2), ("b".into(), 1)]);
    assert_eq!(all[0].wrapped, "w-a-1");
    let rewraps = vec![(1, "re-a-1".to_string()), (2, "re-a-2".to_string())];
    s.dek_rewrapped("a", "v2", &rewraps, &ev("keys.rewrapped", "org:a"))
        .await
        .unwrap();
    let a = s.deks(Some("a")).await.unwrap();
    assert_eq!(a.len(), 2);
    assert!(a
        .iter()
        .all(|d| d.kek_version == "v2" && d.rewrapped_at.is_some()));
    assert_eq!(
        (a[0].wrapped.as_str(), a[1].wrapped.as_str()),
        ("re-a-1", "re-a-2")
    );
    kek.shredded_at = Some(lethe::audit::truncate_micros(Utc::now()));
    let destroyed = s
        .deks_destroy("a", &kek, &|n: &u64| {
            store::evidence(
                "cli:test",
                "keys.shredded",
                "org:a",
                json!({"deks_destroyed": n}),
            )
        })
        .await
        .unwrap();
    assert_eq!(destroyed, 2);
    assert!(s.deks(Some("a")).await.unwrap().is_empty());
    assert_eq!(
        s.deks(Some("b")).await.unwrap().len(),
        1,
        "other orgs keep theirs"
    );
    assert_eq!(s.keks().await.unwrap()[0].shredded_at, kek.shredded_at);
    let events = s.audit_page(0, 100).await.unwrap();
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "keys.kek_rotated",
            "keys.dek_rotated",
            "keys.dek_rotated",
            "keys.dek_rotated",
            "keys.rewrapped",
            "keys.shredded"
        ]
    );
    assert_eq!(
        events[5].details, r#"{"deks_destroyed":2}"#,
        "built from the count"
    );
}

async fn a_failed_change_appends_no_evidence(s: Arc<dyn Store>) {
    s.dek_insert(&dek("a", 1, "v1"), &ev("keys.dek_rotated", "org:a"))
        .await
        .unwrap();
    assert!(
        s.dek_insert(&dek("a", 1, "v1"), &ev("keys.dek_rotated", "org:a"))
            .await
            .is_err(),
        "(org, version) exists"
    );
    assert_eq!(trail(&s).await.len(), 1, "the failed insert left no event");
    s.append_audit(&ev("after", "x")).await.unwrap();
    let events = s.audit_page(0, 10).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2],
        "the chain has no gap"
    );
}

async fn breaches_open_with_parties_and_record_each_notification_once(s: Arc<dyn Store>) {
    let detected = lethe::audit::truncate_micros(Utc::now() - CDuration::hours(3));
    let party = |p: &str, h: i64| BreachParty {
        party: p.into(),
        rule: format!("{p} rule"),
        due_at: detected + CDuration::hours(h),
        notified_at: None,
        notified_by: None,
        note: None,
    };
    let b = Breach {
        id: 0,
        title: "laptop lost".into(),
        detected_at: detected,
        jurisdictions: json!(["gdpr"]),
        orgs: json!(["1", "2"]),
        subjects: 12,
        created_at: lethe::audit::truncate_micros(Utc::now()),
        parties: vec![party("subjects", 96), party("authority", 72)],
    };
    let id = s
        .breach_insert(&b, &|id: &i64| ev("breach.opened", &format!("breach:{id}")))
        .await
        .unwrap();
    assert_eq!(
        trail(&s).await,
        vec![pair("breach.opened", &format!("breach:{id}"))]
    );
    let id2 = s
        .breach_insert(
            &Breach {
                parties: vec![],
                ..b.clone()
            },
            &|id: &i64| ev("breach.opened", &format!("breach:{id}")),
        )
        .await
        .unwrap();
    assert!(id2 > id);
    let all = s.breaches().await.unwrap();
    assert_eq!(all.len(), 2);
    let got = &all[0];
    assert_eq!(
        (got.id, got.title.as_str(), got.subjects),
        (id, "laptop lost", 12)
    );
    assert_eq!(
        (&got.jurisdictions, &got.orgs, got.detected_at),
        (&b.jurisdictions, &b.orgs, detected)
    );
    let names: Vec<&str> = got.parties.iter().map(|p| p.party.as_str()).collect();
    assert_eq!(names, ["authority", "subjects"], "earliest deadline first");
    assert!(all[1].parties.is_empty());
    let event = ev("breach.notified", &format!("breach:{id}"));
    assert!(s
        .breach_notified(id, "authority", "cli:dpo", Some("ref 7"), &event)
        .await
        .unwrap());
    assert!(
        !s.breach_notified(id, "authority", "cli:dpo", None, &event)
            .await
            .unwrap(),
        "recorded once"
    );
    assert!(!s
        .breach_notified(id, "nobody", "cli:dpo", None, &event)
        .await
        .unwrap());
    let p = s.breaches().await.unwrap()[0].parties[0].clone();
    assert!(p.notified_at.is_some());
    assert_eq!(
        (p.notified_by.as_deref(), p.note.as_deref()),
        (Some("cli:dpo"), Some("ref 7"))
    );
    let notified = trail(&s)
        .await
        .iter()
        .filter(|t| t.0 == "breach.notified")
        .count();
    assert_eq!(notified, 1);
}

async fn checkpoints_are_per_run_and_key_and_replaced(s: Arc<dyn Store>) {
    let a = s.enqueue(&new_run("cp-a", past())).await.unwrap().unwrap();
    let b = s.enqueue(&new_run("cp-b", past())).await.unwrap().unwrap();
    assert_eq!(s.checkpoint_get(a, "k").await.unwrap(), None);
    s.checkpoint_put(a, "k", &json!({"table": "users", "last": 10}))
        .await
        .unwrap();
    s.checkpoint_put(a, "k", &json!({"table": "users", "last": 20}))
        .await
        .unwrap();
    s.checkpoint_put(a, "other", &json!([1, 2])).await.unwrap();
    assert_eq!(
        s.checkpoint_get(a, "k").await.unwrap(),
        Some(json!({"table": "users", "last": 20})),
        "replaced"
    );
    assert_eq!(
        s.checkpoint_get(a, "other").await.unwrap(),
        Some(json!([1, 2]))
    );
    assert_eq!(s.checkpoint_get(b, "k").await.unwrap(), None, "per run");
    assert_eq!(s.get_run(a).await.unwrap().unwrap().job, "cp-a");
}
