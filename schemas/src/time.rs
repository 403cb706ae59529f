//! Timestamps travel as Avro `timestamp-micros` (i64) and as RFC 3339 text in JSON.

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserializer, Serializer};

thread_local! {
    static AVRO_FAST: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks this thread as encoding Avro through serde_avro_fast while alive (the codec holds
/// one around each encode), so the instants below go out as µs, not text.
pub(crate) struct AvroFastScope(bool);

impl AvroFastScope {
    pub(crate) fn enter() -> Self {
        AvroFastScope(AVRO_FAST.with(|f| f.replace(true)))
    }
}

impl Drop for AvroFastScope {
    fn drop(&mut self) {
        AVRO_FAST.with(|f| f.set(self.0));
    }
}

/// Whether a serializer that claims to be human-readable is really writing Avro binary
/// (serde_avro_fast), so timestamps must go out as µs.
fn writing_avro() -> bool {
    AVRO_FAST.with(|f| f.get())
}

pub fn to_micros(t: &DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub fn from_micros(us: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_micros(us).single()
}

/// The instant as the contract keeps it: whole microseconds (Avro `timestamp-micros`), and a
/// leap second (`23:59:60`) as the second after it. Every instant read from outside goes
/// through this (events in `seal_event`, files through [`deserialize_opt`], flags through
/// [`parse_rfc3339`]), so what is accepted is exactly what the wire gives back. Fuzzing found
/// both halves: nanoseconds in OTLP and CloudEvents, `23:00:60` in a tenant CSV.
pub fn at_wire_precision(t: DateTime<Utc>) -> DateTime<Utc> {
    from_micros(t.timestamp_micros()).unwrap_or(t)
}

/// RFC 3339 text as an instant at wire precision (command-line flags: `value_parser`).
pub fn parse_rfc3339(s: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
    DateTime::parse_from_rfc3339(s).map(|t| at_wire_precision(t.with_timezone(&Utc)))
}

/// serde `deserialize_with` for an instant in JSON a client writes: see [`deserialize_opt`].
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    use serde::Deserialize;
    Ok(at_wire_precision(DateTime::<Utc>::deserialize(d)?))
}

/// serde `deserialize_with` for optional instants in files people write (prices, tenants,
/// budgets): chrono's own reading (so TOML datetimes work too), then [`at_wire_precision`].
pub fn deserialize_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    use serde::Deserialize;
    Ok(Option::<DateTime<Utc>>::deserialize(d)?.map(at_wire_precision))
}

/// serde `with` module for `DateTime<Utc>` fields of Avro records.
pub mod micros {
    use super::*;

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() && !writing_avro() {
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
        parse_rfc3339(s).map_err(E::custom)
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
            Some(t) if s.is_human_readable() && !writing_avro() => {
                s.serialize_some(&t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
            }
            Some(t) => s.serialize_some(&to_micros(t)),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        d.deserialize_option(OptTextOrMicros)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_from_outside_are_kept_as_the_wire_keeps_them() {
        let leap = parse_rfc3339("2026-01-31T23:00:60Z").unwrap();
        assert_eq!(leap, parse_rfc3339("2026-01-31T23:01:00Z").unwrap());
        let nanos = parse_rfc3339("2026-01-31T23:00:00.123456789Z").unwrap();
        assert_eq!(nanos.timestamp_subsec_nanos(), 123_456_000);
        for t in [leap, nanos] {
            assert_eq!(from_micros(to_micros(&t)), Some(t));
        }
        #[derive(serde::Deserialize)]
        struct F {
            #[serde(default, deserialize_with = "deserialize_opt")]
            at: Option<DateTime<Utc>>,
        }
        let f: F = serde_json::from_str(r#"{"at":"2026-06-30T23:59:60.5Z"}"#).unwrap();
        assert_eq!(f.at, Some(parse_rfc3339("2026-07-01T00:00:00.5Z").unwrap()));
        let f: F = serde_json::from_str("{}").unwrap();
        assert_eq!(f.at, None);
    }
}
