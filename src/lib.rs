//! Lethe: keeps a SaaS company's data-lifecycle promises — retention, backups,
//! data-subject requests, key rotation, breach timers — and leaves evidence.
//! See ARCHITECTURE.md for the map.

pub mod appdb;
pub mod archive;
pub mod audit;
pub mod aws;
pub mod backup;
pub mod breach;
pub mod chain;
pub mod cipher;
pub mod cleanup;
pub mod cli;
pub mod commands;
pub mod config;
pub mod context;
pub mod demo;
pub mod dsr;
pub mod entry;
pub mod error;
pub mod fence;
pub mod http;
pub mod jobs;
pub mod keys;
pub mod kms;
pub mod mail;
pub mod merkle;
pub mod metrics;
pub mod notify;
pub mod objstore;
pub mod org;
pub mod policy;
pub mod private_file;
pub mod progress;
pub mod retention;
pub mod runner;
pub mod secret;
pub mod store;
pub mod test_hooks;

pub use error::{Error, Result};
