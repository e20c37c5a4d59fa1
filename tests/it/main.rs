//! Every integration test in one binary: each module is one area, linked once
//! against the library (one link of aws-sdk and sqlx instead of one per file).

mod app_guard;
mod app_keys;
mod audit_anchor_after;
mod audit_anchor_versions;
mod audit_anchors;
mod audit_proofs;
mod backup;
mod backup_counts;
mod cli;
mod common;
mod deploy;
mod dsr;
mod dsr_http;
mod evidence_crash;
mod faults;
mod fuzz;
mod hash_rules;
mod keys_breach;
mod layering;
mod mail;
mod mail_render;
mod object_purge;
mod objects;
mod pg_restart;
mod reference_app;
mod replicas;
mod restore;
mod retention;
mod retention_forms;
mod retention_partitions;
mod retention_tables;
mod runner;
mod store_conformance;
mod time_travel;
mod timestamp_forms;
