//! `lethe demo`: a self-contained tour on embedded backends. Builds DIR with a
//! sample app database, config, store, mail folder; runs every job kind once.

use super::out::outln;
use std::path::Path;

use anyhow::{Context as _, Result};
use serde_json::json;

use crate::context::Context;
use crate::error::Error;
use crate::notify::{self, Message, Role};
use crate::runner::{run_now, RunReport};

const MARKER: &str = ".lethe-demo";

pub async fn run(dir: &Path, json_out: bool) -> Result<i32> {
    prepare_dir(dir)?;
    let now = chrono::Utc::now();
    let seeded = crate::demo::seed(&dir.join("app.db"), now).await?;

    write_demo_config(dir)?;

    let config = crate::jobs::load_config(&dir.join("lethe.toml"))?;
    let ctx = Context::open_unchecked(config).await?;
    ctx.store.migrate().await?;
    // Keys first, then the application's encrypted values under version 1,
    // then version 2: the tour's keys.reencrypt has stale values to move.
    let sealed = crate::demo::encrypt_as_the_app(&ctx, &dir.join("app.db")).await?;

    announce(&ctx, dir, &seeded).await?;
    let mut dsrs = crate::demo::submit_sample_requests(&ctx).await?;
    let history = crate::demo::seed_dsr_history(&ctx, now).await?;
    dsrs.push(crate::demo::unverified_past_its_window(&ctx, now).await?);
    let breach = open_sample_breach(&ctx, now).await?;

    let leaving = ask_org_deletion(&ctx).await?;
    let runs = run_every_kind(&ctx).await?;
    let restored = crate::demo::restore_older_backup(&ctx, dir).await?;
    let outcomes = request_outcomes(&ctx, &dsrs).await?;
    let orgs = export_an_org(&ctx, &leaving).await?;
    let stale = stale_ciphertexts(&ctx).await?;
    let keys_summary = json!({"values_sealed": sealed, "stale_ciphertexts": stale});

    let ev = prove_evidence(&ctx).await?;
    let (verified, live) = (&ev.verified, &ev.live);
    let mail_files = std::fs::read_dir(&ctx.config.mail.dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
                .count()
        })
        .unwrap_or(0);

    let all_ok =
        runs.iter().all(RunReport::succeeded) && verified.ok && live.intact() && stale == 0;
    if json_out {
        super::print_json(&json!({
            "dir": dir.display().to_string(),
            "config": dir.join("lethe.toml").display().to_string(),
            "seeded": seeded,
            "dsr": outcomes,
            "restore": restored,
            "dsr_history": history,
            "orgs": orgs,
            "breach": {"id": breach.id, "parties": breach.parties},
            "runs": runs,
            "keys": keys_summary,
            "audit": {"events": ev.events, "verified": verified.ok, "signature": verified.signature,
                      "live": {"intact": live.intact(), "anchors_matched": live.anchors.matched},
                      "proof": {"seq": ev.proof.seq, "action": ev.proof.event["action"],
                                "tree_size": ev.proof.tree_size, "path": ev.proof.path.len(),
                                "anchor": ev.proof.anchor.object}},
            "mail": {"folder": ctx.config.mail.dir.display().to_string(), "messages": mail_files},
        }))?;
    } else {
        print_tour(
            dir,
            &seeded,
            (&outcomes, &restored),
            &history,
            &runs,
            &keys_summary,
            &ev,
            mail_files,
            &ctx,
        );
    }
    Ok(if all_ok { 0 } else { 1 })
}

/// What the tour proves about its evidence.
struct Evidence {
    events: u64,
    verified: crate::audit::VerifyReport,
    live: crate::audit::live::AnchoredReport,
    proof: crate::audit::prove::InclusionProof,
}

/// Proves the evidence holds: the chain exported and verified, signed; the
/// store's chain in place, against the anchors; and an inclusion proof of
/// the first erasure's event (else of event 1) against the newest anchor.
async fn prove_evidence(ctx: &Context) -> Result<Evidence> {
    let mut buf = Vec::new();
    let key = ctx.config.audit.signing_key.load().map_err(Error::Usage)?;
    let events = crate::audit::export(ctx.store.as_ref(), &mut buf, key.as_ref()).await?;
    let verified = crate::audit::verify(std::io::Cursor::new(buf), key.as_ref())?;
    let anchors = crate::audit::anchor::open_store(&ctx.config).await?;
    let (store, anchors) = (ctx.store.as_ref(), anchors.as_ref());
    let live = crate::audit::live::verify_live(store, anchors, key.as_ref()).await?;
    let erased = store.audit_page(0, 1000).await?;
    let seq = erased
        .iter()
        .find(|e| e.action == "dsr.erased")
        .map_or(1, |e| e.seq);
    let proof = crate::audit::prove::inclusion(store, anchors, key.as_ref(), seq, None).await?;
    Ok(Evidence {
        events,
        verified,
        live,
        proof,
    })
}

async fn announce(ctx: &Context, dir: &Path, seeded: &crate::demo::Seeded) -> Result<()> {
    let message = Message {
        role: Role::Ops,
        subject: "[lethe] demo started".into(),
        blocks: vec![crate::notify::Block::Para(format!(
            "The demo seeded {} orgs and {} users with three years of activity in {}.",
            seeded.orgs,
            seeded.users,
            dir.join("app.db").display()
        ))],
        attachments: vec![],
        dedupe_key: Some("demo-started".into()),
    };
    notify::enqueue(ctx, message).await?;
    Ok(())
}

/// Values under a version other than their org's newest, over every org.
async fn stale_ciphertexts(ctx: &Context) -> Result<u64> {
    let keys = crate::keys::status(ctx).await?;
    Ok(keys["orgs"]
        .as_array()
        .map(|orgs| {
            orgs.iter()
                .filter_map(|o| o["stale_ciphertexts"].as_u64())
                .sum()
        })
        .unwrap_or(0))
}

/// The demo's lethe.toml (the starter config with a fresh age recipient) and
/// its secrets: audit signing key, pseudonym key, age identity, all 0600.
fn write_demo_config(dir: &Path) -> Result<()> {
    let identity = age::x25519::Identity::generate();
    // The DPO's export key: apart from the backups' (an export never opens a backup).
    let dpo = age::x25519::Identity::generate();
    let config_text = super::init::STARTER_CONFIG
        .replace("example.com", "demo.example")
        // The DPO reads dates in their own zone, UTC alongside.
        .replace("timezone = \"UTC\" ", "timezone = \"Europe/Berlin\" ")
        .replace(
            "recipients = []",
            &format!("recipients = [\"{}\"]", identity.to_public()),
        )
        .replace(
            "# identity_file = \"/run/secrets/age-identity.txt\"",
            "identity_file = \"secrets/age-identity.txt\"",
        )
        .replace(
            "# export_recipients = [\"age1...\"]",
            &format!("export_recipients = [\"{}\"]", dpo.to_public()),
        )
        .replace(
            "# deliver_to_subject = true ",
            "deliver_to_subject = true   ",
        )
        .replace("# verify_within = \"30d\" ", "verify_within = \"60d\"   ")
        .replace(
            "# pseudonym_key_file = \"/run/secrets/pseudonym-key\"",
            "pseudonym_key_file = \"secrets/pseudonym-key\"",
        )
        .replace(
            "# signing_key_file = \"/run/secrets/audit-signing-key\"",
            "signing_key_file = \"secrets/audit-signing-key\"",
        )
        + crate::demo::DATA_MAP;
    super::write_starter(dir, &config_text, true)?;
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets)?;
    let key =
        uuid::Uuid::new_v4().simple().to_string() + &uuid::Uuid::new_v4().simple().to_string();
    crate::private_file::write(&secrets.join("audit-signing-key"), key)?;
    let pseudonym =
        uuid::Uuid::new_v4().simple().to_string() + &uuid::Uuid::new_v4().simple().to_string();
    crate::private_file::write(&secrets.join("pseudonym-key"), pseudonym)?;
    {
        use age::secrecy::ExposeSecret;
        crate::private_file::write(
            &secrets.join("age-identity.txt"),
            format!("{}\n", identity.to_string().expose_secret()),
        )?;
        crate::private_file::write(
            &secrets.join("dpo-export.key"),
            format!("{}\n", dpo.to_string().expose_secret()),
        )?;
    }
    Ok(())
}

/// A few requests: the sole owner's erasure is refused; a member's export and
/// another user's erasure go through dsr.process.
/// One breach, found 30 hours ago: its 72-hour deadlines are 42 hours away.
async fn open_sample_breach(
    ctx: &Context,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<crate::store::Breach> {
    Ok(crate::breach::open(
        ctx,
        crate::breach::Opening {
            title: "API keys of one tenant exposed in a public repository".into(),
            detected_at: now - chrono::Duration::hours(30),
            jurisdictions: vec!["gdpr".into(), "uu_pdp".into()],
            orgs: vec!["3".into()],
            subjects: 42,
        },
    )
    .await?)
}

/// Tenant 2 asks for its export; with tenant 12's deletion, what the tour did for orgs.
async fn export_an_org(
    ctx: &Context,
    leaving: &crate::store::OrgRequest,
) -> Result<serde_json::Value> {
    let export = crate::org::export(ctx, "2", &[], "demo").await?;
    Ok(
        json!({"deletion": {"request": leaving.id, "org": leaving.org},
              "export": {"request": export["request"], "org": "2", "object": export["object"]}}),
    )
}

/// Tenant 12 (closed a month ago) asks to be deleted now: the tour's org.purge runs it.
async fn ask_org_deletion(ctx: &Context) -> Result<crate::store::OrgRequest> {
    let ask = crate::org::DeletionAsk {
        org: "12",
        classes: &[],
        reason: "contract ended",
        after: std::time::Duration::ZERO,
        contact: Some("admin@tenant12.example"),
        actor: "demo",
    };
    Ok(crate::org::request_deletion(ctx, ask).await?)
}

/// Every registered kind once, in registry order, through the real executor.
async fn run_every_kind(ctx: &std::sync::Arc<Context>) -> Result<Vec<RunReport>> {
    let mut runs: Vec<RunReport> = Vec::new();
    let registry = crate::jobs::registry();
    for kind in registry.kinds() {
        let spec = ctx
            .config
            .jobs
            .iter()
            .find(|j| j.kind == kind)
            .cloned()
            .ok_or_else(|| Error::Failed(format!("the starter catalog has no {kind} job")))?;
        // The purge runs as a dry run: the tour shows what would go and leaves the sample
        // intact, so `lethe run retention.purge` afterwards has real work to show.
        let dry_run = kind == "retention.purge";
        let report = run_now(ctx, &registry, &spec, spec.params.clone(), dry_run).await?;
        runs.push(report);
    }
    Ok(runs)
}

#[allow(clippy::too_many_arguments)]
fn print_tour(
    dir: &Path,
    seeded: &crate::demo::Seeded,
    (dsrs, restored): (&[serde_json::Value], &serde_json::Value),
    history: &crate::demo::History,
    runs: &[RunReport],
    keys: &serde_json::Value,
    ev: &Evidence,
    mail_files: usize,
    ctx: &Context,
) {
    outln!("Lethe demo in {}", dir.display());
    outln!(
        "  seeded app.db: {} orgs, {} users, {} customers, {} memberships, {} API logs, {} webhooks, {} audit logs, {} documents (with {} files in appfiles/), {} LLM logs",
        seeded.orgs, seeded.users, seeded.customers, seeded.memberships, seeded.api_request_logs, seeded.webhook_deliveries,
        seeded.audit_logs, seeded.documents, seeded.document_files, seeded.llm_interactions
    );
    outln!(
        "  owner@demo.example is the sole owner of Acme Analytics; member@demo.example is a member"
    );
    outln!();
    print_requests(dsrs, history);
    print_restore(restored);
    outln!();
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                format!("{}{}", r.kind, if r.dry_run { " (dry run)" } else { "" }),
                r.status.to_string(),
                format!("{} ms", r.duration_ms.unwrap_or(0)),
                r.result
                    .as_ref()
                    .map(|v| v.to_string())
                    .unwrap_or_default()
                    .chars()
                    .take(70)
                    .collect(),
            ]
        })
        .collect();
    super::print_table(&["JOB KIND", "STATUS", "TIME", "RESULT"], &rows);
    outln!();
    outln!(
        "  keys: {} phone numbers and NIKs sealed under version 1 of their org's data key; \
         version 2 created; after keys.reencrypt, stale ciphertexts: {}",
        keys["values_sealed"],
        keys["stale_ciphertexts"]
    );
    print_evidence(ev);
    outln!(
        "  mail: {mail_files} message(s) in {}",
        ctx.config.mail.dir.display()
    );
    outln!();
    outln!("Try, in {}:", dir.display());
    outln!("  lethe run retention.purge --dry-run   # what the data map says has expired");
    outln!("  lethe run retention.purge             # delete it, with evidence in the audit chain");
    outln!("  lethe dsr report                      # the DPO's SLA report (mailed weekly), overdue first");
    outln!("  lethe backup list; lethe backup verify ID");
    outln!("  lethe org status --org 12 --json       # tenant 12 deleted: its certificate, and the backups that still hold it until when");
    outln!("  lethe org export --org 2 --json        # every row of tenant 2 as JSON Lines, zstd + age");
    outln!(
        "  lethe keys status                      # each org's key versions and stale ciphertexts"
    );
    outln!("  lethe jobs history; lethe audit export --signed --out audit.jsonl && lethe audit verify audit.jsonl");
    outln!("  lethe audit verify --live                # the store's chain against every anchor");
    outln!(
        "  lethe audit prove {} --json             # the inclusion proof above, for an auditor",
        ev.proof.seq
    );
    outln!();
    outln!("On your own PostgreSQL cluster, for an RPO of minutes: backup.mode = \"physical\" takes base");
    outln!("backups, `lethe wal push %p` archives the WAL, and `lethe backup restore --to-dir DIR --to-time T`");
    outln!("recovers to any moment (README: Point-in-time recovery). The demo stays on SQLite: logical dumps.");
}

fn print_requests(dsrs: &[serde_json::Value], history: &crate::demo::History) {
    for d in dsrs {
        outln!(
            "  dsr #{} {} for {}: {}; now {}{}",
            d["id"],
            d["kind"].as_str().unwrap_or(""),
            d["subject"].as_str().unwrap_or(""),
            d["intake"].as_str().unwrap_or(""),
            d["state"].as_str().unwrap_or(""),
            d["reason"]
                .as_str()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        );
        if let Some(copy) = d["subject_copy"].as_str() {
            outln!("    the subject was mailed a link to {copy} and, separately, its password (see mail/)");
        }
    }
    outln!(
        "  dsr history: {} requests over six months imported ({} completed, {} of them late; {} extended; {} rejected; {} open)",
        history.requests, history.completed, history.completed_late, history.extended, history.rejected, history.open
    );
}

fn print_restore(r: &serde_json::Value) {
    outln!(
        "  backup restore of {} (taken before dsr.process) into restored-app.db: {} rectification(s) and {} erasure(s) applied again; {}'s name there: {}",
        r["id"].as_str().unwrap_or(""),
        r["rectifications_reapplied"],
        r["erasures_reapplied"],
        crate::demo::PLAIN_MEMBER,
        r["member_name"].as_str().unwrap_or("(none)")
    );
}

/// Each of the tour's requests as it stands after dsr.process ran.
async fn request_outcomes(
    ctx: &Context,
    dsrs: &[serde_json::Value],
) -> Result<Vec<serde_json::Value>> {
    let mut out = Vec::new();
    for d in dsrs {
        let mut d = d.clone();
        if let Some(r) = ctx.store.dsr_get(d["id"].as_i64().unwrap_or(0)).await? {
            d["state"] = json!(r.state.as_str());
            d["reason"] = json!(r.reason);
            d["subject_copy"] = r
                .result
                .as_ref()
                .map_or(json!(null), |v| v["subject_copy"]["object"].clone());
        }
        out.push(d);
    }
    Ok(out)
}

fn print_evidence(ev: &Evidence) {
    let (verified, live, proof) = (&ev.verified, &ev.live, &ev.proof);
    outln!(
        "  audit chain: {} events, verified {}, signature {}",
        ev.events,
        verified.ok,
        verified.signature
    );
    outln!(
        "  audit verify --live: chain intact {}, {} anchor(s) in {} match",
        live.intact(),
        live.anchors.matched,
        live.anchors.store
    );
    outln!(
        "  audit prove {}: event {} ({}) is in the tree of {} events anchored in {}, by {} hashes",
        proof.seq,
        proof.seq,
        proof.event["action"].as_str().unwrap_or(""),
        proof.tree_size,
        proof.anchor.object,
        proof.path.len()
    );
}

/// Creates DIR, or replaces a previous demo's DIR; never deletes anything else.
fn prepare_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !empty && !dir.join(MARKER).exists() {
            return Err(Error::Usage(format!(
                "{} exists and is not a Lethe demo folder; pass another --dir",
                dir.display()
            ))
            .into());
        }
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("clearing old demo in {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(
        dir.join(MARKER),
        "created by `lethe demo`; safe to delete\n",
    )?;
    Ok(())
}
