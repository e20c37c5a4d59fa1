//! The manifest stored beside each backup (and copied into the catalog):
//! one typed struct that `create` writes and `verify` reads, so a field
//! cannot go missing without verification noticing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub const MANIFEST_FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub id: String,
    /// RFC 3339.
    pub created_at: String,
    pub object: String,
    pub stored_bytes: u64,
    pub raw_bytes: u64,
    /// SHA-256 (hex) of the stored, encrypted object.
    pub sha256: String,
    pub compression: Compression,
    pub encryption: Encryption,
    pub database: Database,
    /// Rows per table at the dump's snapshot; verify compares the restore with these.
    pub row_counts: BTreeMap<String, i64>,
    /// How the counts were taken: `dump stream` (read from pg_dump's output as
    /// it was stored) or `snapshot count` (`count(*)` in the dump's snapshot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row_counts_from: Option<String>,
    pub timings: Timings,
    pub lethe_version: String,
    /// A physical base backup's place in the WAL (absent for a logical dump).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical: Option<Physical>,
}

/// Where a base backup starts and ends in the WAL: restoring it needs every
/// archived segment from `start_wal` on, and it is consistent from `end_lsn`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Physical {
    pub timeline: u32,
    pub start_lsn: String,
    pub end_lsn: String,
    /// The first WAL file the restore needs (`%08X%08X%08X`).
    pub start_wal: String,
    pub wal_segment_bytes: u64,
    /// RFC 3339: when the backup ended; a recovery target must be later.
    pub stopped_at: String,
    /// The cluster's `system_identifier` (where the role may read it): WAL of
    /// another cluster (a new one after an upgrade) never continues this backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_identifier: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compression {
    pub algorithm: String,
    pub level: i32,
    pub threads: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Encryption {
    pub algorithm: String,
    pub recipients: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Database {
    /// `postgres` or `sqlite`.
    pub kind: String,
    pub server_version: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timings {
    pub total_ms: u64,
}

impl Manifest {
    /// Parses and checks a manifest; `what` names it in errors ("the catalog's manifest of backup X").
    pub fn parse(value: &serde_json::Value, what: &str) -> Result<Manifest> {
        let m: Manifest = serde_json::from_value(value.clone())
            .map_err(|e| Error::Backup(format!("{what} is invalid: {e}")))?;
        m.check()
            .map_err(|e| Error::Backup(format!("{what} is invalid: {e}")))?;
        Ok(m)
    }

    pub fn from_slice(bytes: &[u8], what: &str) -> Result<Manifest> {
        let v: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| Error::Backup(format!("{what} is not JSON: {e}")))?;
        Manifest::parse(&v, what)
    }

    pub fn to_value(&self) -> serde_json::Value {
        // A struct of strings, numbers and maps always serialises.
        serde_json::to_value(self).unwrap_or_default()
    }

    /// Every field present and meaningful: a manifest that says nothing verifies nothing.
    fn check(&self) -> std::result::Result<(), String> {
        let empty = |name: &str, s: &str| {
            if s.trim().is_empty() {
                Err(format!("`{name}` is empty"))
            } else {
                Ok(())
            }
        };
        if self.format != MANIFEST_FORMAT {
            return Err(format!(
                "`format` is {}, this Lethe reads format {MANIFEST_FORMAT}",
                self.format
            ));
        }
        empty("id", &self.id)?;
        empty("object", &self.object)?;
        empty("lethe_version", &self.lethe_version)?;
        empty("compression.algorithm", &self.compression.algorithm)?;
        empty("encryption.algorithm", &self.encryption.algorithm)?;
        empty("database.server_version", &self.database.server_version)?;
        chrono::DateTime::parse_from_rfc3339(&self.created_at)
            .map_err(|e| format!("`created_at` `{}` is not RFC 3339: {e}", self.created_at))?;
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("`sha256` is not a SHA-256 in hex".into());
        }
        if self.stored_bytes == 0 || self.raw_bytes == 0 {
            return Err("`stored_bytes` or `raw_bytes` is 0".into());
        }
        if self.encryption.recipients.is_empty() {
            return Err("`encryption.recipients` is empty".into());
        }
        if !matches!(self.database.kind.as_str(), "postgres" | "sqlite") {
            return Err(format!(
                "`database.kind` is `{}`, not postgres or sqlite",
                self.database.kind
            ));
        }
        // A cluster may hold no table yet; a dump with none compares nothing.
        if self.row_counts.is_empty() && self.physical.is_none() {
            return Err("`row_counts` is empty: there is nothing to compare a restore with".into());
        }
        if let Some((t, n)) = self.row_counts.iter().find(|(_, n)| **n < 0) {
            return Err(format!("`row_counts` has {n} rows for {t}"));
        }
        match self.row_counts_from.as_deref() {
            None | Some("dump stream" | "snapshot count" | "estimate at start") => {}
            Some(other) => return Err(format!("`row_counts_from` is `{other}`")),
        }
        if let Some(p) = &self.physical {
            for (name, lsn) in [("start_lsn", &p.start_lsn), ("end_lsn", &p.end_lsn)] {
                super::physical::parse_lsn(lsn)
                    .map_err(|_| format!("`physical.{name}` `{lsn}` is not an LSN"))?;
            }
            chrono::DateTime::parse_from_rfc3339(&p.stopped_at)
                .map_err(|e| format!("`physical.stopped_at` is not RFC 3339: {e}"))?;
            if p.start_wal.len() != 24 || !super::physical::valid_segment_bytes(p.wal_segment_bytes)
            {
                return Err(
                    "`physical.start_wal` or `physical.wal_segment_bytes` is invalid".into(),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn good() -> serde_json::Value {
        json!({
            "format": 1, "id": "20260101T000000Z-abcdef", "created_at": "2026-01-01T00:00:00+00:00",
            "object": "backups/x.sqlite.zst.age", "stored_bytes": 10, "raw_bytes": 20,
            "sha256": "a".repeat(64),
            "compression": {"algorithm": "zstd", "level": 3, "threads": 2},
            "encryption": {"algorithm": "age", "recipients": ["age1x"]},
            "database": {"kind": "sqlite", "server_version": "sqlite 3.45"},
            "row_counts": {"users": 3}, "timings": {"total_ms": 5}, "lethe_version": "0.1.0",
        })
    }

    #[test]
    fn a_complete_manifest_parses_and_round_trips() {
        let m = Manifest::parse(&good(), "m").unwrap();
        assert_eq!(m.row_counts["users"], 3);
        assert_eq!(m.to_value(), good());
    }

    #[test]
    fn missing_empty_or_unknown_fields_are_refused() {
        for field in [
            "row_counts",
            "sha256",
            "raw_bytes",
            "format",
            "database",
            "id",
        ] {
            let mut v = good();
            v.as_object_mut().unwrap().remove(field);
            let e = Manifest::parse(&v, "m").unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
        for (field, empty) in [
            ("row_counts", json!({})),
            ("sha256", json!("")),
            ("object", json!(" ")),
            ("stored_bytes", json!(0)),
            ("format", json!(2)),
        ] {
            let mut v = good();
            v[field] = empty;
            let e = Manifest::parse(&v, "m").unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
        let mut v = good();
        v["extra"] = json!(1);
        assert!(Manifest::parse(&v, "m").is_err());
    }
}
