//! Avro single-object encoding (`C3 01` + CRC-64-AVRO fingerprint, little endian + body).
//!
//! Every record type has one [`Codec`], built once (schema parsed, fingerprints computed,
//! writer schemas of earlier versions registered) and reused for every record. Decoding
//! looks the writer schema up by fingerprint and resolves it to the current reader schema,
//! so records written by an older producer still decode (Avro resolution rules: fields are
//! only ever added with defaults).

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::OnceLock;

use apache_avro::rabin::Rabin;
use apache_avro::{GenericSingleObjectReader, Schema};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::events::*;
use crate::Error;

/// Single-object encoding marker.
pub const MAGIC: [u8; 2] = [0xC3, 0x01];
const HEADER_LEN: usize = 10;

/// A record type with a schema in `schemas/avro/`.
pub trait AvroRecord: Serialize + DeserializeOwned + Sized + 'static {
    /// Full name of the record, e.g. `io.meterline.UsageEvent`.
    const NAME: &'static str;
    /// The current writer/reader schema (`.avsc` text).
    const SCHEMA: &'static str;
    /// Earlier versions of the schema still accepted on decode.
    const HISTORY: &'static [&'static str] = &[];

    /// The record's codec, built on first use.
    fn codec() -> &'static Codec<Self>;

    fn to_avro(&self) -> Result<Vec<u8>, Error> {
        Self::codec().encode(self)
    }

    fn from_avro(bytes: &[u8]) -> Result<Self, Error> {
        Self::codec().decode(bytes)
    }
}

/// Encoder/decoder of one record type.
pub struct Codec<T> {
    schema: &'static Schema,
    /// The current schema for serde_avro_fast, which encodes and decodes straight between `T`
    /// and bytes (apache-avro goes through a `Value` tree, most of the CPU of a record).
    /// apache-avro still parses, fingerprints, resolves older writer schemas, and encodes the
    /// rare record serde_avro_fast refuses (money above rust_decimal's 96-bit mantissa at
    /// scale 18, i.e. ≥ ~7.9e10).
    fast: serde_avro_fast::Schema,
    fingerprint: [u8; 8],
    /// Per accepted fingerprint: a reader with the writer schema's names resolved once (plain
    /// `from_avro_datum` re-resolves the schema on every record, a measurable share of decode).
    writers: HashMap<[u8; 8], GenericSingleObjectReader>,
    _t: PhantomData<fn() -> T>,
}

fn parse(text: &'static str, what: &str) -> Result<&'static Schema, Error> {
    let s = Schema::parse_str(text).map_err(|e| Error::Schema(format!("{what}: {e}")))?;
    Ok(Box::leak(Box::new(s)))
}

/// CRC-64-AVRO (Rabin) fingerprint of the schema's canonical form, as written on the wire.
pub fn fingerprint(schema: &Schema) -> [u8; 8] {
    let fp = schema.fingerprint::<Rabin>();
    let mut out = [0u8; 8];
    out.copy_from_slice(&fp.bytes[..8]);
    out
}

/// The largest length or item count the Avro decoder accepts (see [`Codec::build`]).
pub const MAX_AVRO_ALLOCATION: usize = 1 << 20;

impl<T: AvroRecord> Codec<T> {
    /// Parses the schemas and builds lookup tables. Called once per type (see `codec()`).
    pub fn build() -> Result<Self, Error> {
        // apache-avro reserves a map's or array's declared item count before reading the
        // items, bounded only by this limit (512 Mi by default): 30 bytes declaring 2^29 tags
        // made it allocate 10 GiB (found by fuzzing). A record of ours is at most a Kafka
        // record (1 MB by default) and every item takes at least one byte, so a count above
        // that is never real.
        apache_avro::util::max_allocation_bytes(MAX_AVRO_ALLOCATION);
        let schema = parse(T::SCHEMA, T::NAME)?;
        let fp = fingerprint(schema);
        let reader = |s: &Schema| {
            GenericSingleObjectReader::new(s.clone())
                .map_err(|e| Error::Schema(format!("{}: {e}", T::NAME)))
        };
        let mut writers = HashMap::new();
        writers.insert(fp, reader(schema)?);
        for (i, old) in T::HISTORY.iter().enumerate() {
            let s = parse(old, &format!("{} history #{i}", T::NAME))?;
            writers.insert(fingerprint(s), reader(s)?);
        }
        let fast = T::SCHEMA
            .parse()
            .map_err(|e| Error::Schema(format!("{}: {e}", T::NAME)))?;
        Ok(Codec {
            schema,
            fast,
            fingerprint: fp,
            writers,
            _t: PhantomData,
        })
    }

    pub fn schema(&self) -> &'static Schema {
        self.schema
    }

    pub fn fingerprint(&self) -> [u8; 8] {
        self.fingerprint
    }

    /// Appends the single-object encoding of `value` to `buf`.
    pub fn encode_into(&self, value: &T, buf: &mut Vec<u8>) -> Result<(), Error> {
        buf.extend_from_slice(&MAGIC);
        buf.extend_from_slice(&self.fingerprint);
        let body = buf.len();
        // 1. The fast path. serde_avro_fast's serializer calls itself human-readable, so the
        //    timestamp impls are told through `time::AvroFastScope` to write µs, not text.
        let mut config = serde_avro_fast::ser::SerializerConfig::new(&self.fast);
        let fast = {
            let _scope = crate::time::AvroFastScope::enter();
            serde_avro_fast::to_datum(value, &mut *buf, &mut config)
        };
        if fast.is_ok() {
            return Ok(());
        }
        // 2. Anything it refuses goes through apache-avro, which writes the same bytes
        //    (`schemas/tests/contract.rs` checks both encoders agree byte for byte).
        buf.truncate(body);
        apache_avro::write_avro_datum_ref(self.schema, value, buf).map_err(|e| Error::Encode {
            record: T::NAME,
            reason: e.to_string(),
        })?;
        Ok(())
    }

    /// Encodes with apache-avro only: the reference the fast path is tested against.
    pub fn encode_reference(&self, value: &T) -> Result<Vec<u8>, Error> {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&MAGIC);
        buf.extend_from_slice(&self.fingerprint);
        apache_avro::write_avro_datum_ref(self.schema, value, &mut buf).map_err(|e| {
            Error::Encode {
                record: T::NAME,
                reason: e.to_string(),
            }
        })?;
        Ok(buf)
    }

    pub fn encode(&self, value: &T) -> Result<Vec<u8>, Error> {
        let mut buf = Vec::with_capacity(256);
        self.encode_into(value, &mut buf)?;
        Ok(buf)
    }

    /// Decodes a single-object encoded record written with the current or an earlier schema.
    pub fn decode(&self, bytes: &[u8]) -> Result<T, Error> {
        if bytes.len() < HEADER_LEN || bytes[..2] != MAGIC {
            return Err(Error::NotSingleObject { record: T::NAME });
        }
        let mut fp = [0u8; 8];
        fp.copy_from_slice(&bytes[2..HEADER_LEN]);
        let writer = self
            .writers
            .get(&fp)
            .ok_or_else(|| Error::UnknownFingerprint {
                record: T::NAME,
                fingerprint: hex::encode(fp),
            })?;
        if fp == self.fingerprint {
            // The fast path; what it refuses (money beyond rust_decimal's mantissa at scale
            // 18, or a bad record) goes the general way below, which has the final word.
            if let Ok(v) = serde_avro_fast::from_datum_slice(&bytes[HEADER_LEN..], &self.fast) {
                return Ok(v);
            }
        }
        let decode_err = |e: apache_avro::Error| Error::Decode {
            record: T::NAME,
            reason: e.to_string(),
        };
        // The reader checks the same header again and decodes the body after it.
        let mut body = bytes;
        // Decode with the writer's schema, then resolve to the current one.
        let mut value = writer.read_value(&mut body).map_err(decode_err)?;
        if fp != self.fingerprint {
            value = value.resolve(self.schema).map_err(decode_err)?;
        }
        if !body.is_empty() {
            return Err(Error::Decode {
                record: T::NAME,
                reason: format!("{} trailing bytes", body.len()),
            });
        }
        apache_avro::from_value::<T>(&value).map_err(|e| Error::Decode {
            record: T::NAME,
            reason: e.to_string(),
        })
    }
}

macro_rules! avro_record {
    ($ty:ty, $name:literal, $file:literal $(, history = [$($old:literal),*])?) => {
        impl AvroRecord for $ty {
            const NAME: &'static str = $name;
            const SCHEMA: &'static str = include_str!(concat!("../avro/", $file));
            $(const HISTORY: &'static [&'static str] = &[$(include_str!(concat!("../avro/history/", $old))),*];)?
            fn codec() -> &'static Codec<Self> {
                static CODEC: OnceLock<Codec<$ty>> = OnceLock::new();
                // The schemas are compiled in and proven valid by the tests: failing here is a build defect.
                CODEC.get_or_init(|| Codec::build().expect(concat!("invalid schema ", $file)))
            }
        }
    };
}

avro_record!(
    UsageEvent,
    "io.meterline.UsageEvent",
    "usage_event.avsc",
    history = ["usage_event.v1.avsc", "usage_event.v2.avsc"]
);
avro_record!(
    PricedUsage,
    "io.meterline.PricedUsage",
    "priced_usage.avsc",
    history = ["priced_usage.v1.avsc"]
);
avro_record!(PriceChange, "io.meterline.PriceChange", "price_change.avsc");
avro_record!(
    TenantChange,
    "io.meterline.TenantChange",
    "tenant_change.avsc"
);
avro_record!(
    BudgetChange,
    "io.meterline.BudgetChange",
    "budget_change.avsc"
);
avro_record!(
    BudgetSignal,
    "io.meterline.BudgetSignal",
    "budget_signal.avsc"
);
avro_record!(Anomaly, "io.meterline.Anomaly", "anomaly.avsc");
