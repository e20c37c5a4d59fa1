//! PostgreSQL's tuple id, `(page,offset)`: where a row version lies in its
//! relation. Read in binary (six bytes), so a walk of a million rows parses
//! no text per row; written as PostgreSQL writes it in checkpoints, log
//! lines and the statements that bind tids (as text cast to `tid[]`: see
//! `cipher_rewrite_pg`).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgTypeInfo, PgValueFormat, PgValueRef};
use sqlx::{Decode, Postgres, Type};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tid {
    pub page: u32,
    pub offset: u16,
}

impl Tid {
    /// Before the first row of page `page`: offsets start at 1.
    pub fn page_start(page: u32) -> Tid {
        Tid { page, offset: 0 }
    }
}

impl std::fmt::Display for Tid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "({},{})", self.page, self.offset)
    }
}

impl std::str::FromStr for Tid {
    type Err = String;

    fn from_str(s: &str) -> Result<Tid, String> {
        let bad = || format!("not a tuple id `(page,offset)`: {s:?}");
        let inner = s
            .trim()
            .strip_prefix('(')
            .and_then(|s| s.strip_suffix(')'))
            .ok_or_else(bad)?;
        let (page, offset) = inner.split_once(',').ok_or_else(bad)?;
        Ok(Tid {
            page: page.trim().parse().map_err(|_| bad())?,
            offset: offset.trim().parse().map_err(|_| bad())?,
        })
    }
}

impl Serialize for Tid {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Tid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Tid, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Type<Postgres> for Tid {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_name("tid")
    }
}

impl Decode<'_, Postgres> for Tid {
    fn decode(value: PgValueRef<'_>) -> Result<Tid, BoxDynError> {
        match value.format() {
            PgValueFormat::Binary => {
                let b = value.as_bytes()?;
                let b: [u8; 6] = b
                    .try_into()
                    .map_err(|_| format!("a tid is 6 bytes, got {}", b.len()))?;
                Ok(Tid {
                    page: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                    offset: u16::from_be_bytes([b[4], b[5]]),
                })
            }
            PgValueFormat::Text => Ok(value.as_str()?.parse()?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips_and_rejects_garbage() {
        let t: Tid = "(4294967295,65535)".parse().unwrap();
        assert_eq!(
            t,
            Tid {
                page: u32::MAX,
                offset: u16::MAX
            }
        );
        assert_eq!(t.to_string(), "(4294967295,65535)");
        let json = serde_json::to_string(&Tid::page_start(7)).unwrap();
        assert_eq!(json, "\"(7,0)\"");
        assert_eq!(
            serde_json::from_str::<Tid>(&json).unwrap(),
            Tid::page_start(7)
        );
        for bad in ["", "(1)", "1,2", "(1,2", "(-1,2)", "(1,65536)", "(a,b)"] {
            assert!(bad.parse::<Tid>().is_err(), "{bad}");
        }
    }
}
