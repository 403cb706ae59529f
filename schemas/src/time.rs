//! Timestamps travel as Avro `timestamp-micros` (i64) and as RFC 3339 text in JSON.

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserializer, Serializer};

pub fn to_micros(t: &DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub fn from_micros(us: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_micros(us).single()
}

/// serde `with` module for `DateTime<Utc>` fields of Avro records.
pub mod micros {
    use super::*;

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() && !crate::codec::writing_avro() {
            s.collect_str(&t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        } else {
            s.serialize_i64(to_micros(t))
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        // Self-describing formats say what they hold: RFC 3339 text (JSON) or µs (Avro read
        // by serde_avro_fast, which calls itself human-readable but is schema-driven).
        if d.is_human_readable() {
            d.deserialize_any(TextOrMicros)
        } else {
            d.deserialize_i64(TextOrMicros)
        }
    }
}

/// Accepts a timestamp as RFC 3339 text or as µs since the epoch.
pub struct TextOrMicros;

impl<'de> serde::de::Visitor<'de> for TextOrMicros {
    type Value = DateTime<Utc>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an RFC 3339 timestamp or microseconds since the epoch")
    }
    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(E::custom)
    }
    fn visit_i64<E: serde::de::Error>(self, us: i64) -> Result<Self::Value, E> {
        from_micros(us).ok_or_else(|| E::custom("timestamp out of range"))
    }
    fn visit_u64<E: serde::de::Error>(self, us: u64) -> Result<Self::Value, E> {
        i64::try_from(us)
            .map_err(E::custom)
            .and_then(|us| self.visit_i64(us))
    }
}

/// An optional timestamp, either representation (see [`TextOrMicros`]).
struct OptTextOrMicros;

impl<'de> serde::de::Visitor<'de> for OptTextOrMicros {
    type Value = Option<DateTime<Utc>>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("null or a timestamp")
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        micros::deserialize(d).map(Some)
    }
}

/// The same for `Option<DateTime<Utc>>` (Avro `["null", timestamp-micros]`).
pub mod micros_opt {
    use super::*;

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            None => s.serialize_none(),
            Some(t) if s.is_human_readable() && !crate::codec::writing_avro() => {
                s.serialize_some(&t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
            }
            Some(t) => s.serialize_some(&to_micros(t)),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        d.deserialize_option(OptTextOrMicros)
    }
}
