//! `lethe wal push|fetch`: PostgreSQL's archive_command and restore_command.
//! No store database: only the config and the object store.

use super::out::outln;

use anyhow::Result;

use crate::backup::wal::{self, Fetched};
use crate::cli::WalCommand;
use crate::config::Config;
use crate::error::Error;

/// An exit status above 125 makes PostgreSQL stop recovery; any other
/// failure would read as "no more WAL", and it would open the database early.
const STOP_RECOVERY: i32 = 126;

pub async fn dispatch(config: Config, command: WalCommand) -> Result<i32> {
    let Some(store_cfg) = config.object_store.as_ref() else {
        return Err(Error::Usage(
            "wal push and wal fetch need [object_store]: where the WAL is archived".into(),
        )
        .into());
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
                    eprintln!("{name}: not in the archive");
                    Ok(1)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    Ok(STOP_RECOVERY)
                }
            }
        }
    }
}
