//! `lethe check`: config, job catalog, store, app database, mail, secrets.
//! Exit 2 for a bad config, 1 when something configured does not work.

use super::out::outln;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::appdb::{check_data_map, AppDb};
use crate::config::{self, redact_url, Config};
use crate::context::Context;
use crate::error::{exit, Error};

#[derive(Serialize)]
struct Check {
    name: String,
    status: &'static str, // ok | warn | error
    detail: String,
}

#[derive(Serialize)]
struct Report {
    ok: bool,
    config: String,
    checks: Vec<Check>,
}

fn ok(name: &str, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        status: "ok",
        detail: detail.into(),
    }
}
fn warn(name: &str, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        status: "warn",
        detail: detail.into(),
    }
}
fn fail(name: &str, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        status: "error",
        detail: detail.into(),
    }
}

pub async fn run(flag: Option<&Path>, json: bool) -> Result<i32> {
    let path = config::resolve_path(flag);
    let config = match crate::jobs::load_config(&path) {
        Ok(c) => c,
        Err(e) => {
            if json {
                super::print_json(&Report {
                    ok: false,
                    config: path.display().to_string(),
                    checks: vec![fail("config", e.to_string())],
                })?;
                return Ok(exit::USAGE);
            }
            return Err(e.into());
        }
    };
    let mut checks = vec![ok(
        "config",
        format!(
            "{} ({} jobs from {})",
            path.display(),
            config.jobs.len(),
            config.runner.jobs_dir.display()
        ),
    )];
    checks.extend(job_checks(&config));
    let schema_error = database_checks(&config, &mut checks).await;
    checks.push(match config.audit.signing_key.load() {
        Ok(Some(_)) => ok(
            "audit signing key",
            format!("present in {}", config.audit.signing_key.describe()),
        ),
        Ok(None) => warn(
            "audit signing key",
            format!(
                "not set ({}); `audit export --signed` will refuse",
                config.audit.signing_key.describe()
            ),
        ),
        Err(e) => fail("audit signing key", e),
    });

    anchor_checks(&config, &mut checks).await;
    if let Some(c) = export_delivery_check(&config) {
        checks.push(c);
    }
    if let Some(c) = drill_check(&config).await {
        checks.push(c);
    }
    if let Some(c) = wal_check(&config).await {
        checks.push(c);
    }
    store_and_mail_checks(config, &mut checks).await;

    let ok_all = checks.iter().all(|c| c.status != "error");
    if json {
        super::print_json(&Report {
            ok: ok_all,
            config: path.display().to_string(),
            checks,
        })?;
    } else {
        for c in &checks {
            outln!("{:<5} {:<18} {}", c.status.to_uppercase(), c.name, c.detail);
        }
    }
    // A data map that does not fit the schema is bad config: exit 2, like a TOML error.
    Ok(if schema_error {
        exit::USAGE
    } else if ok_all {
        exit::OK
    } else {
        exit::FAILED
    })
}

/// Where exports go, when DSRs are configured: their keys, and whether the
/// subject's link can work outside this machine.
fn export_delivery_check(config: &Config) -> Option<Check> {
    const NAME: &str = "export delivery";
    config.app.as_ref()?;
    let on_s3 = config
        .object_store
        .as_ref()
        .is_some_and(|o| o.url.starts_with("s3://"));
    Some(match config.export_recipients() {
        // Retention alone needs no export key: exports fail, loudly, until one is set.
        Err(e) => warn(NAME, e.to_string()),
        Ok(_) if config.dsr.deliver_to_subject && !on_s3 => warn(
            NAME,
            "dsr.deliver_to_subject on a folder store: the subject's link is a path on this machine \
             that no one else can open (development only); use an S3 object store for presigned links",
        ),
        Ok(keys)
            if keys.iter().any(|k| {
                config.backup.recipients.iter().any(|b| config::same_age_key(k, b))
            }) =>
        {
            warn(
            NAME,
            "exports are encrypted to a backup key (dsr.export_to_backup_keys): whoever opens one can open every backup",
            )
        }
        Ok(keys) => ok(
            NAME,
            format!(
                "{} export key(s){}",
                keys.len(),
                if config.dsr.deliver_to_subject { "; subjects get their own copy by mail" } else { "; the DPO delivers exports" }
            ),
        ),
    })
}

/// The application database: reachable, the data map against its schema, and
/// the timestamp forms; true when the schema does not fit (bad config).
async fn database_checks(config: &Config, checks: &mut Vec<Check>) -> bool {
    let mut schema_error = false;
    let db_url = redact_url(&config.database.url);
    match AppDb::connect(&config.database.url).await {
        Ok(db) => match db.tables().await {
            Ok(t) => {
                checks.push(ok(
                    "database",
                    format!("{db_url} reachable, {} tables", t.len()),
                ));
                match check_data_map(&db, config).await {
                    Ok(problems) => {
                        for p in &problems {
                            let detail = format!(
                                "{}: data_map entry `{}`: {}",
                                p.location, p.table, p.message
                            );
                            checks.push(if p.fatal {
                                fail("data map", detail)
                            } else {
                                warn("data map", detail)
                            });
                        }
                        schema_error = problems.iter().any(|p| p.fatal);
                        if problems.is_empty() {
                            checks.push(ok(
                                "data map",
                                format!("{} tables match the schema", config.data_map.len()),
                            ));
                        }
                        if !schema_error {
                            let forms = time_form_checks(&db, config).await;
                            schema_error = forms.iter().any(|c| c.status == "error");
                            checks.extend(forms);
                            checks.extend(guard_checks(&db, config).await);
                        }
                    }
                    Err(e) => checks.push(fail("data map", e.to_string())),
                }
            }
            Err(e) => checks.push(fail("database", format!("{db_url}: {e}"))),
        },
        Err(e) => checks.push(fail("database", format!("{db_url}: {e}"))),
    }
    schema_error
}

/// Every `append_only` table carries the guard (`appdb::guard`); a missing
/// one is an error naming the table and the command that installs it.
async fn guard_checks(db: &AppDb, config: &Config) -> Vec<Check> {
    const NAME: &str = "append-only guard";
    let guarded: Vec<_> = config.data_map.iter().filter(|e| e.append_only).collect();
    if guarded.is_empty() {
        return Vec::new();
    }
    let configured = config.database.retention_role.as_deref();
    let role = match crate::appdb::guard::retention_role(db, configured).await {
        Ok(r) => r,
        Err(e) => return vec![fail(NAME, e.to_string())],
    };
    let mut checks = Vec::new();
    for e in guarded {
        let t = &e.table;
        checks.push(match crate::appdb::guard::check(db, t, &role).await {
            Ok(missing) if missing.is_empty() => ok(NAME, format!("{t}: UPDATE and TRUNCATE refused, DELETE only by Lethe's retention{}", if role.is_empty() { String::new() } else { format!(" (role {role})") })),
            Ok(missing) => fail(NAME, format!(
                "{}: data_map entry `{t}` is append_only, but the table lacks {}: run `lethe app guard install --table {t} --apply` (without --apply it prints the SQL to review)",
                e.location, missing.join(", ")
            )),
            Err(err) => fail(NAME, format!("{t}: {err}")),
        });
    }
    checks
}

/// Anchors: configured, scheduled, and written on time: the newest no older
/// than twice the `audit.anchor` schedule's period (else anchoring has
/// stopped: an error), and no gap between two longer than that (a warning).
async fn anchor_checks(config: &Config, checks: &mut Vec<Check>) {
    const NAME: &str = "audit anchors";
    let Some(cfg) = &config.audit.anchor_url else {
        checks.push(warn(NAME, "no [audit] anchor_url: a rewrite of the audit history by whoever owns the store's database would go unnoticed"));
        return;
    };
    let now = chrono::Utc::now();
    let period = config
        .jobs
        .iter()
        .filter(|j| j.kind == "audit.anchor" && j.enabled)
        .filter_map(|j| {
            let a = j.schedule.next_fire(now)?;
            Some(j.schedule.next_fire(a)? - a)
        })
        .min();
    let Some(period) = period else {
        checks.push(warn(NAME, "no enabled job of kind audit.anchor: nothing writes anchors (add jobs/audit.anchor.toml)"));
        return;
    };
    let store = redact_url(&cfg.url);
    let rhythm = match crate::objstore::open(cfg).await {
        Ok(s) => crate::audit::anchor::rhythm(s.as_ref()).await,
        Err(e) => Err(e),
    };
    let limit = period * 2;
    checks.push(match rhythm {
        Err(e) => fail(NAME, format!("{store}: {e}")),
        Ok(r) => match (&r.newest, &r.longest_gap) {
            (None, _) => warn(NAME, format!("no anchor in {store} yet (run `lethe run audit.anchor`)")),
            (Some((key, at)), _) if now - *at > limit => fail(NAME, format!(
                "the newest anchor in {store} ({key}) was written {at}, more than twice the audit.anchor schedule ({}) ago: anchoring has stopped; see `lethe jobs history --job audit.anchor`",
                crate::policy::format_duration(period.to_std().unwrap_or_default())
            )),
            (_, Some((a, b, gap))) if *gap > limit => warn(NAME, format!(
                "{} anchors in {store}; a gap of {} between {a} and {b}, more than twice the audit.anchor schedule ({}): events of that window were anchored late",
                r.anchors,
                // To the minute: a gap of `2h`, not of `7199961ms`.
                crate::policy::format_duration(std::time::Duration::from_secs(
                    (gap.num_seconds().max(0).unsigned_abs() + 30) / 60 * 60
                )),
                crate::policy::format_duration(period.to_std().unwrap_or_default())
            )),
            (Some((key, at)), _) => ok(NAME, format!("{} anchors in {store}, the newest ({key}) written {at}", r.anchors)),
        },
    });
}

/// The store (reachable, migrated), mail (transport, recipients).
async fn store_and_mail_checks(config: Config, checks: &mut Vec<Check>) {
    let store_url = redact_url(&config.store.url);
    match Context::open_unchecked(config).await {
        Err(Error::Mail(m)) => checks.push(fail("mail", m)),
        Err(e) => checks.push(fail("store", format!("{store_url}: {e}"))),
        Ok(ctx) => {
            checks.push(match ctx.store.is_migrated().await {
                Ok(true) => ok("store", format!("{store_url} reachable, schema up to date")),
                Ok(false) => fail(
                    "store",
                    format!("{store_url} reachable but not migrated; run `lethe migrate`"),
                ),
                Err(e) => fail("store", format!("{store_url}: {e}")),
            });
            checks.push(match ctx.mailer.test().await {
                Ok(()) => ok("mail", ctx.mailer.describe()),
                Err(e) => fail("mail", e.to_string()),
            });
            for (role, list) in [("dpo", &ctx.config.mail.dpo), ("ops", &ctx.config.mail.ops)] {
                if list.is_empty() {
                    checks.push(warn(
                        "mail recipients",
                        format!("no `{role}` recipients: their mail is not sent"),
                    ));
                }
            }
        }
    }
}

/// How each timestamp a retention rule compares stores time; one that cannot
/// be read is bad config (exit 2), like a missing column.
async fn time_form_checks(db: &AppDb, config: &Config) -> Vec<Check> {
    let name = "timestamp form";
    match crate::retention::time_forms(config, db, chrono::Utc::now()).await {
        Err(e) => vec![fail(name, e.to_string())],
        Ok(columns) => columns
            .iter()
            .map(|c| match &c.found {
                Ok(d) => ok(
                    name,
                    format!(
                        "`{}`.`{}`: {} (declared {})",
                        c.table, c.column, d.form, d.declared
                    ),
                ),
                Err(m) => fail(
                    name,
                    format!("{}: data_map entry `{}`: {m}", c.location, c.table),
                ),
            })
            .collect(),
    }
}

/// Where restore drills run (PostgreSQL, with a `backup.verify` job): apart
/// from the application's server, on it by explicit permission (a warning),
/// or nowhere (an error).
async fn drill_check(config: &Config) -> Option<Check> {
    const NAME: &str = "restore drills";
    let drills = config
        .jobs
        .iter()
        .any(|j| j.enabled && j.kind == crate::backup::VERIFY_KIND);
    if !drills || !config.database.url.starts_with("postgres") {
        return None;
    }
    if config.backup.mode == crate::config::BackupMode::Physical {
        // A base backup's drill runs a server of its own in TMPDIR, not on scratch_url.
        let tmp = std::env::temp_dir();
        return Some(ok(
            NAME,
            format!(
                "base backups restored in {} on this host (set TMPDIR to a disk the size of the cluster, not the server's)",
                tmp.display()
            ),
        ));
    }
    Some(
        match crate::backup::scratch::server(config, &config.database.url).await {
            Ok((_, true)) => warn(
                NAME,
                "on the application's own server (allow_scratch_on_app_server): a drill competes with \
                 production for I/O, memory and disk; set backup.scratch_url to a separate server",
            ),
            Ok((url, false)) => ok(NAME, format!("on {}", redact_url(&url))),
            Err(e) => fail(NAME, e.to_string()),
        },
    )
}

/// PostgreSQL archiving through `lethe wal push`, when the server uses it:
/// failing (an error), or able to hold WAL unarchived longer than
/// `backup.rpo` because `archive_timeout` is off or longer (a warning).
async fn wal_check(config: &Config) -> Option<Check> {
    const NAME: &str = "wal archiving";
    if !config.database.url.starts_with("postgres") {
        return None;
    }
    let state = match crate::backup::wal::archive_state(&config.database.url).await {
        Ok(s) if s.via_lethe => s,
        Ok(_) if config.backup.mode == crate::config::BackupMode::Physical => return Some(fail(
            NAME,
            "backup.mode = \"physical\" but the server does not archive through lethe wal push: \
                 base backups would have no WAL to restore from; set archive_mode = on and \
                 archive_command = 'lethe --config … wal push %p'",
        )),
        Ok(_) => return None,
        Err(e) => {
            return Some(warn(
                NAME,
                format!("could not read the server's archiving state: {e}"),
            ))
        }
    };
    let rpo = config.backup.rpo.as_secs() as i64;
    let last = state
        .last_archived
        .map_or("none yet".to_string(), |t| t.to_rfc3339());
    Some(match (state.last_failed, state.last_archived) {
        (Some(f), a) if a.is_none_or(|a| f > a) => fail(
            NAME,
            format!("archive_command is failing (last failure {}, last segment archived: {last}); see the server's log", f.to_rfc3339()),
        ),
        _ if state.timeout_s == 0 || state.timeout_s > rpo => warn(
            NAME,
            format!(
                "archive_timeout is {}: a quiet server keeps its open segment unarchived for longer than \
                 backup.rpo ({rpo} s); set archive_timeout below it (e.g. 60)",
                if state.timeout_s == 0 { "off".to_string() } else { format!("{} s", state.timeout_s) }
            ),
        ),
        _ => ok(
            NAME,
            format!("through lethe wal push; archive_timeout {} s; last segment archived {last}", state.timeout_s),
        ),
    })
}

fn job_checks(config: &Config) -> Vec<Check> {
    let now = chrono::Utc::now();
    config
        .jobs
        .iter()
        .map(|j| {
            let name = format!("job {}", j.name);
            if !j.enabled {
                return warn(&name, "disabled");
            }
            match j.schedule.next_fire(now) {
                Some(t) => ok(
                    &name,
                    format!(
                        "{} `{}` next at {}",
                        j.kind,
                        j.schedule.expr(),
                        t.to_rfc3339()
                    ),
                ),
                None => warn(
                    &name,
                    format!("schedule `{}` never fires again", j.schedule.expr()),
                ),
            }
        })
        .collect()
}
