//! `lethe wal push|fetch`: PostgreSQL's archive_command and restore_command.
//! No store database: only the config and the object store.

use super::out::outln;

use std::io::Write;
use std::path::Path;

use anyhow::Result;

use crate::backup::wal::{self, Fetched};
use crate::cli::WalCommand;
use crate::config::Config;
use crate::error::Error;

/// An exit status above 125 makes PostgreSQL stop recovery; any other
/// failure would read as "no more WAL", and it would open the database early.
const STOP_RECOVERY: i32 = 126;

pub async fn dispatch(flag: Option<&Path>, command: WalCommand) -> Result<i32> {
    if matches!(command, WalCommand::Fetch { .. }) {
        // A panic's 101 would read as "no more WAL" too: stop recovery instead.
        std::panic::set_hook(Box::new(|info| {
            let _ = writeln!(std::io::stderr(), "error: lethe wal fetch crashed: {info}");
            std::process::exit(STOP_RECOVERY);
        }));
    }
    let config = super::load(flag).and_then(|c: Config| match c.object_store {
        Some(_) => Ok(c),
        None => Err(Error::Usage(
            "wal push and wal fetch need [object_store]: where the WAL is archived".into(),
        )
        .into()),
    });
    let config = match (config, &command) {
        (Ok(c), _) => c,
        // A config that does not load must stop recovery, not end it.
        (Err(e), WalCommand::Fetch { .. }) => {
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            return Ok(STOP_RECOVERY);
        }
        (Err(e), WalCommand::Push { .. }) => return Err(e),
    };
    let Some(store_cfg) = config.object_store.as_ref() else {
        return Ok(STOP_RECOVERY);
    };
    match command {
        WalCommand::Push { path, json } => {
            let store = crate::objstore::open(store_cfg).await?;
            let p = wal::push(&config, store.as_ref(), &path).await?;
            if json {
                super::print_json(&p)?;
            } else if p.already_archived {
                outln!("{}: archived already, same bytes", p.name);
            } else {
                outln!(
                    "{}: archived ({} bytes, {} stored)",
                    p.name,
                    p.bytes,
                    p.stored_bytes
                );
            }
            Ok(0)
        }
        WalCommand::Fetch { name, dest } => {
            let fetched = match crate::objstore::open(store_cfg).await {
                Ok(store) => wal::fetch(&config, store.as_ref(), &name, &dest).await,
                Err(e) => Err(e),
            };
            match fetched {
                Ok(Fetched::Restored { .. }) => Ok(0),
                Ok(Fetched::Missing) => {
                    let _ = writeln!(std::io::stderr(), "{name}: not in the archive");
                    Ok(1)
                }
                Err(e) => {
                    let _ = writeln!(std::io::stderr(), "error: {e}");
                    Ok(STOP_RECOVERY)
                }
            }
        }
    }
}
