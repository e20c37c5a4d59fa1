//! A duration as a job param: parsed when the params are deserialized (at
//! load), kept as written so results echo what the operator typed.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::parse_duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurationParam {
    text: String,
    value: Duration,
}

impl DurationParam {
    pub fn parse(text: &str) -> Result<Self, String> {
        Ok(DurationParam {
            value: parse_duration(text)?,
            text: text.to_string(),
        })
    }

    pub fn get(&self) -> Duration {
        self.value
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl<'de> Deserialize<'de> for DurationParam {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        DurationParam::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Serialize for DurationParam {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_when_deserialized_and_serializes_as_written() {
        let p: DurationParam = serde_json::from_str("\"30d\"").unwrap();
        assert_eq!(p.get(), Duration::from_secs(30 * 86_400));
        assert_eq!(serde_json::to_string(&p).unwrap(), "\"30d\"");
        let e = serde_json::from_str::<DurationParam>("\"99999999999w\"").unwrap_err();
        assert!(e.to_string().contains("too long"), "{e}");
        assert!(serde_json::from_str::<DurationParam>("\"3x\"").is_err());
    }
}
