//! The meterline contract: Avro schemas (`avro/*.avsc`, the source of truth), the Rust types
//! mirroring them, the single-object Avro codec, topic names, the Arrow schema of the Parquet
//! ledger, `Money`, scopes, and the metric names (one place, read by dashboards). No I/O:
//! Kafka clients, telemetry and auth live in `meterline-runtime`.

pub mod arrow_schema;
pub mod codec;
pub mod events;
pub mod metric_names;
pub mod money;
pub mod scope;
pub mod time;
pub mod topics;
pub mod unit;

pub use codec::{AvroRecord, Codec};
pub use events::*;
pub use money::Money;

/// Errors of the contract crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("amount {0} has more than 18 decimals")]
    MoneyScale(String),
    #[error("amount {0} is out of range")]
    MoneyRange(String),
    #[error("decimal of {0} bytes is not a valid amount")]
    MoneyBytes(usize),
    #[error("'{0}' is not a decimal number")]
    MoneyParse(String),
    #[error("invalid schema: {0}")]
    Schema(String),
    #[error("cannot encode {record}: {reason}")]
    Encode {
        record: &'static str,
        reason: String,
    },
    #[error("cannot decode {record}: {reason}")]
    Decode {
        record: &'static str,
        reason: String,
    },
    #[error("not an Avro single-object encoded {record} (missing C3 01 header)")]
    NotSingleObject { record: &'static str },
    #[error("{record} written with unknown schema fingerprint {fingerprint}")]
    UnknownFingerprint {
        record: &'static str,
        fingerprint: String,
    },
}
