//! One file a user verb. Each returns the exit code; errors carry theirs.

mod app;
mod audit;
mod audit_prove;
mod backup;
mod breach;
mod check;
mod demo;
mod dsr;
mod init;
mod jobs;
mod keys;
mod migrate;
mod objects;
mod org;
pub mod out;
mod retention;
mod run;
mod serve;
mod wal;

pub use init::{write_starter, STARTER_JOBS};

use std::path::Path;
use std::sync::Arc;

use anyhow::Result;

use out::outln;

use crate::cli::{AuditCommand, Cli, Command, JobsCommand};
use crate::config::{self, Config};
use crate::context::Context;

pub async fn dispatch(cli: Cli) -> Result<i32> {
    let cfg_flag = cli.config.as_deref();
    match cli.command {
        Command::Init { dir, force } => init::run(&dir, force),
        Command::Demo { dir, json } => demo::run(&dir, json).await,
        Command::Migrate => migrate::run(load(cfg_flag)?).await,
        Command::Check { json } => check::run(cfg_flag, json).await,
        Command::Serve { only, no_schedule } => {
            let config = serve::only_jobs(load(cfg_flag)?, &only, no_schedule)?;
            serve::run(Context::open(config).await?).await
        }
        Command::Run {
            job,
            dry_run,
            params,
            detach,
            json,
        } => {
            let ctx = open(cfg_flag).await?;
            if detach {
                run::detach(ctx, &job, dry_run, &params, json).await
            } else {
                run::run(ctx, &job, dry_run, &params, json).await
            }
        }
        Command::Jobs { command } => match command {
            JobsCommand::List { json } => jobs::list(open(cfg_flag).await?, json).await,
            JobsCommand::History { limit, job, json } => {
                jobs::history(open(cfg_flag).await?, limit, job, json).await
            }
        },
        Command::Audit { command } => audit_dispatch(cfg_flag, command).await,
        Command::Retention { command } => retention::dispatch(open(cfg_flag).await?, command).await,
        Command::Dsr { command } => dsr::dispatch(open(cfg_flag).await?, command).await,
        Command::Keys { command } => keys::dispatch(open(cfg_flag).await?, command).await,
        Command::Objects { command } => objects::dispatch(open(cfg_flag).await?, command).await,
        Command::Breach { command } => breach::dispatch(open(cfg_flag).await?, command).await,
        Command::Backup { command } => backup::dispatch(open(cfg_flag).await?, command).await,
        Command::Wal { command } => wal::dispatch(cfg_flag, command).await,
        Command::Org { command } => org::dispatch(open(cfg_flag).await?, command).await,
        Command::Hold { command } => retention::dispatch_hold(open(cfg_flag).await?, command).await,
        Command::App { command } => app::dispatch(open(cfg_flag).await?, command).await,
    }
}

/// `lethe audit …`.
async fn audit_dispatch(cfg_flag: Option<&Path>, command: AuditCommand) -> Result<i32> {
    match command {
        AuditCommand::Export { signed, out } => {
            audit::export(open(cfg_flag).await?, signed, out.as_deref()).await
        }
        AuditCommand::Verify {
            file,
            live: _, // clap: FILE is absent exactly when --live is given
            anchors,
            extends,
            require_signature,
            json,
        } => {
            let how = audit::VerifyHow {
                require_signature,
                json,
            };
            match (file, extends) {
                (None, _) => audit::verify_live(open(cfg_flag).await?, how).await,
                (Some(new), Some(old)) => audit::verify_extends(cfg_flag, &new, &old, how),
                (Some(f), None) if anchors => audit::verify_anchored(cfg_flag, &f, how).await,
                (Some(f), None) => audit::verify(cfg_flag, &f, how),
            }
        }
        AuditCommand::Prove {
            seq,
            anchor,
            consistency,
            json,
        } => {
            let ctx = open(cfg_flag).await?;
            match (seq, consistency.as_deref()) {
                (_, Some(&[old, new])) => audit_prove::consistency(ctx, old, new, json).await,
                (Some(seq), _) => audit_prove::inclusion(ctx, seq, anchor, json).await,
                // clap: SEQ is required unless --consistency, which takes two values
                _ => Err(
                    crate::error::Error::Usage("give SEQ or --consistency OLD NEW".into()).into(),
                ),
            }
        }
    }
}

/// The config with every job's kind and params checked against the registry.
fn load(flag: Option<&Path>) -> Result<Config> {
    Ok(crate::jobs::load_config(&config::resolve_path(flag))?)
}

async fn open(flag: Option<&Path>) -> Result<Arc<Context>> {
    Ok(Context::open(load(flag)?).await?)
}

pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Left-aligned columns for human output.
pub(crate) fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths.get(i).copied().unwrap_or(0)))
            .collect();
        outln!("{}", parts.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}
