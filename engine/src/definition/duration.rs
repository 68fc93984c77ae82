//! Durations in definitions: human-readable strings (`200ms`, `5s`, `10m`, `1h 30m`) or a bare
//! integer of milliseconds, stored as whole milliseconds.

use std::fmt;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative duration in whole milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DurationMs(pub u64);

impl DurationMs {
    pub fn parse(text: &str) -> Result<DurationMs, String> {
        let parsed = humantime::parse_duration(text.trim())
            .map_err(|e| format!("bad duration {text:?}: {e}"))?;
        u64::try_from(parsed.as_millis())
            .map(DurationMs)
            .map_err(|_| format!("bad duration {text:?}: too large"))
    }

    pub fn as_millis(self) -> u64 {
        self.0
    }
}

impl fmt::Display for DurationMs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}",
            humantime::format_duration(std::time::Duration::from_millis(self.0))
        )
    }
}

impl Serialize for DurationMs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for DurationMs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = DurationMs;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"200ms\", \"5s\", \"10m\", or milliseconds")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<DurationMs, E> {
                Ok(DurationMs(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<DurationMs, E> {
                u64::try_from(v)
                    .map(DurationMs)
                    .map_err(|_| E::custom(format!("bad duration {v}: negative")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DurationMs, E> {
                DurationMs::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_human_durations() {
        assert_eq!(DurationMs::parse("200ms").unwrap(), DurationMs(200));
        assert_eq!(DurationMs::parse("5s").unwrap(), DurationMs(5_000));
        assert_eq!(DurationMs::parse("1h 30m").unwrap(), DurationMs(5_400_000));
        assert!(DurationMs::parse("soon").unwrap_err().contains("soon"));
    }

    #[test]
    fn round_trips_through_display() {
        let d = DurationMs(61_500);
        assert_eq!(DurationMs::parse(&d.to_string()).unwrap(), d);
    }
}
