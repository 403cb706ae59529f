//! Timestamps travel as Avro `timestamp-micros` (i64) and as RFC 3339 text in JSON.

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Deserializer, Serializer};

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
        if s.is_human_readable() {
            s.collect_str(&t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        } else {
            s.serialize_i64(to_micros(t))
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            DateTime::parse_from_rfc3339(&s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(serde::de::Error::custom)
        } else {
            let us = i64::deserialize(d)?;
            from_micros(us).ok_or_else(|| serde::de::Error::custom("timestamp out of range"))
        }
    }
}

/// The same for `Option<DateTime<Utc>>` (Avro `["null", timestamp-micros]`).
pub mod micros_opt {
    use super::*;

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            None => s.serialize_none(),
            Some(t) if s.is_human_readable() => {
                s.serialize_some(&t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
            }
            Some(t) => s.serialize_some(&to_micros(t)),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        if d.is_human_readable() {
            let s = Option::<String>::deserialize(d)?;
            s.map(|s| {
                DateTime::parse_from_rfc3339(&s)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(serde::de::Error::custom)
            })
            .transpose()
        } else {
            let us = Option::<i64>::deserialize(d)?;
            us.map(|us| {
                from_micros(us).ok_or_else(|| serde::de::Error::custom("timestamp out of range"))
            })
            .transpose()
        }
    }
}
