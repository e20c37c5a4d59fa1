//! Deadlines per jurisdiction, kept as data.

use chrono::{DateTime, Duration, Months, Utc};

use crate::config::DsrConfig;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// Calendar months: 31 January + 1 month = 28 (or 29) February.
    Months(u32),
    Days(u32),
    Hours(u32),
    /// `dsr.default_deadline` from the config.
    Configured,
}

impl Deadline {
    pub fn after(self, t: DateTime<Utc>) -> Result<DateTime<Utc>> {
        let r = match self {
            Deadline::Months(m) => t.checked_add_months(Months::new(m)),
            Deadline::Days(d) => t.checked_add_signed(Duration::days(i64::from(d))),
            Deadline::Hours(h) => t.checked_add_signed(Duration::hours(i64::from(h))),
            Deadline::Configured => None,
        };
        r.ok_or_else(|| Error::Failed("deadline out of the calendar's range".into()))
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Jurisdiction {
    pub code: &'static str,
    pub name: &'static str,
    pub export: Deadline,
    pub erasure: Deadline,
    /// GDPR Art. 16 and UU PDP Art. 30 ("3×24 hours"); CCPA §1798.106 with §1798.130's 45 days.
    pub rectification: Deadline,
    /// How far past the original deadline it may be extended (None: not at all).
    pub extension: Option<Deadline>,
    /// The law allows one extension only (CCPA: "once by an additional 45 days").
    pub extend_once: bool,
    pub extension_text: &'static str,
    /// The deadline runs from the identity check, not from receipt, for a
    /// request that arrived unverified (the UK ICO: "the time limit starts
    /// from when you receive the information"); elsewhere from receipt
    /// (GDPR Art. 12(3) "of receipt of the request"; CCPA regulations
    /// §7021(a) "regardless of time required to verify").
    pub clock_from_verification: bool,
}

pub const JURISDICTIONS: &[Jurisdiction] = &[
    Jurisdiction {
        code: "gdpr",
        name: "GDPR",
        export: Deadline::Months(1),
        erasure: Deadline::Months(1),
        rectification: Deadline::Months(1),
        extension: Some(Deadline::Months(2)),
        extend_once: false,
        extension_text: "Art. 12(3): two further months",
        clock_from_verification: false,
    },
    Jurisdiction {
        code: "uk_gdpr",
        name: "UK GDPR",
        export: Deadline::Months(1),
        erasure: Deadline::Months(1),
        rectification: Deadline::Months(1),
        extension: Some(Deadline::Months(2)),
        extend_once: false,
        extension_text: "Art. 12(3): two further months",
        clock_from_verification: true,
    },
    Jurisdiction {
        code: "ccpa",
        name: "CCPA/CPRA",
        export: Deadline::Days(45),
        erasure: Deadline::Days(45),
        rectification: Deadline::Days(45),
        extension: Some(Deadline::Days(45)),
        extend_once: true,
        extension_text: "§1798.130: one further 45 days",
        clock_from_verification: false,
    },
    Jurisdiction {
        code: "uu_pdp",
        name: "UU PDP",
        export: Deadline::Hours(72),
        erasure: Deadline::Hours(72),
        rectification: Deadline::Hours(72),
        extension: None,
        extend_once: false,
        extension_text: "Art. 32–43: 3×24 hours, no extension",
        clock_from_verification: false,
    },
    Jurisdiction {
        code: "default",
        name: "default",
        export: Deadline::Configured,
        erasure: Deadline::Configured,
        rectification: Deadline::Configured,
        extension: Some(Deadline::Days(30)),
        extend_once: false,
        extension_text: "30 further days",
        clock_from_verification: false,
    },
];

impl Jurisdiction {
    pub fn find(code: &str) -> Result<&'static Jurisdiction> {
        let c = code.trim().to_lowercase().replace('-', "_");
        let c = if c == "cpra" { "ccpa".to_string() } else { c };
        JURISDICTIONS.iter().find(|j| j.code == c).ok_or_else(|| {
            let known: Vec<&str> = JURISDICTIONS.iter().map(|j| j.code).collect();
            Error::Usage(format!(
                "unknown jurisdiction `{code}`; known: {}",
                known.join(", ")
            ))
        })
    }

    /// The latest deadline an extension of `r` may reach, or why it may not
    /// be extended (any more).
    pub fn extension_limit(
        &self,
        kind: &str,
        received_at: DateTime<Utc>,
        extended_days: i32,
        cfg: &DsrConfig,
    ) -> std::result::Result<DateTime<Utc>, String> {
        let Some(ext) = self.extension else {
            return Err(format!("{} allows no extension", self.name));
        };
        if self.extend_once && extended_days > 0 {
            return Err(format!(
                "{} allows one extension, and this request was extended already ({})",
                self.name, self.extension_text
            ));
        }
        let base = self
            .deadline(kind, cfg)
            .after(received_at)
            .map_err(|e| e.to_string())?;
        ext.after(base).map_err(|e| e.to_string())
    }

    pub fn deadline(&self, kind: &str, cfg: &DsrConfig) -> Deadline {
        let d = match kind {
            "erasure" => self.erasure,
            "rectification" => self.rectification,
            _ => self.export,
        };
        match d {
            Deadline::Configured => {
                Deadline::Hours(u32::try_from(cfg.default_deadline.as_secs() / 3600).unwrap_or(720))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, m: u32, d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, 10, 0, 0).unwrap()
    }

    #[test]
    fn deadlines_per_jurisdiction() {
        // Snapshot table: (jurisdiction, received, due).
        let cases = [
            ("gdpr", at(2026, 1, 31), at(2026, 2, 28)),
            ("gdpr", at(2028, 1, 31), at(2028, 2, 29)),
            ("uk_gdpr", at(2026, 3, 31), at(2026, 4, 30)),
            ("gdpr", at(2026, 12, 15), at(2027, 1, 15)),
            ("ccpa", at(2026, 1, 1), at(2026, 2, 15)),
            ("cpra", at(2026, 1, 1), at(2026, 2, 15)),
        ];
        for (code, received, due) in cases {
            let j = Jurisdiction::find(code).unwrap();
            assert_eq!(j.export.after(received).unwrap(), due, "{code} {received}");
        }
        let pdp = Jurisdiction::find("UU-PDP").unwrap();
        assert_eq!(pdp.export.after(at(2026, 1, 1)).unwrap(), at(2026, 1, 4));
    }

    #[test]
    fn ccpa_extends_once_gdpr_up_to_its_limit_uu_pdp_never() {
        let cfg = crate::config::DsrConfig::for_tests();
        let limit = |code: &str, extended: i32| {
            Jurisdiction::find(code).unwrap().extension_limit(
                "export",
                at(2026, 1, 1),
                extended,
                &cfg,
            )
        };
        assert_eq!(limit("ccpa", 0), Ok(at(2026, 4, 1)));
        let again = limit("ccpa", 10).unwrap_err();
        assert!(again.contains("allows one extension"), "{again}");
        assert_eq!(limit("gdpr", 10), Ok(at(2026, 4, 1)));
        assert!(limit("uu_pdp", 0)
            .unwrap_err()
            .contains("allows no extension"));
    }

    #[test]
    fn unknown_jurisdictions_are_named() {
        let e = Jurisdiction::find("mars").unwrap_err().to_string();
        assert!(
            e.contains("unknown jurisdiction `mars`") && e.contains("gdpr"),
            "{e}"
        );
    }
}
