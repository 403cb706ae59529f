//! Arrow schema of the Parquet usage ledger (`data/usage/date=YYYY-MM-DD/*.parquet`): one row
//! per priced event, flattened for columnar scans. Money columns are `Decimal128(38, 18)`,
//! the same precision and scale as the Avro `decimal` fields.

use std::sync::{Arc, OnceLock};

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::money::{MONEY_PRECISION, MONEY_SCALE};

pub fn money_type() -> DataType {
    DataType::Decimal128(MONEY_PRECISION, MONEY_SCALE as i8)
}

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn dict() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

/// Money columns of the ledger, in order.
pub const MONEY_COLUMNS: [&str; 8] = [
    "cost_input",
    "cost_cache_read",
    "cost_cache_write",
    "cost_output",
    "cost_reasoning",
    "cost_other",
    "cost_total",
    "gateway_reported_cost",
];

/// The ledger schema. Built once.
pub fn usage_ledger_schema() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    S.get_or_init(|| {
        let f = |n: &str, t: DataType, null: bool| Field::new(n, t, null);
        Arc::new(Schema::new(vec![
            f("event_id", DataType::Utf8, false),
            f("occurred_at", ts(), false),
            f("received_at", ts(), false),
            f("priced_at", ts(), false),
            f("source", dict(), false),
            f("org", dict(), false),
            f("business_unit", dict(), true),
            f("cost_center", dict(), true),
            f("team", dict(), true),
            f("project", dict(), true),
            f("environment", dict(), true),
            f("tenant_rule_id", dict(), true),
            f("api_key_id", dict(), true),
            f("user_id", dict(), true),
            f("end_user", DataType::Utf8, true),
            f("agent_id", DataType::Utf8, true),
            f("workflow_id", DataType::Utf8, true),
            f("session_id", DataType::Utf8, true),
            f("tags", DataType::Utf8, true),
            f("provider", dict(), false),
            f("model", dict(), false),
            f("operation", dict(), false),
            f("service_tier", dict(), false),
            f("status", dict(), false),
            f("http_status", DataType::Int32, true),
            f("latency_ms", DataType::Int64, true),
            f("ttft_ms", DataType::Int64, true),
            f("region", dict(), true),
            f("input_tokens", DataType::Int64, false),
            f("cache_read_tokens", DataType::Int64, false),
            f("cache_write_5m_tokens", DataType::Int64, false),
            f("cache_write_1h_tokens", DataType::Int64, false),
            f("output_tokens", DataType::Int64, false),
            f("reasoning_tokens", DataType::Int64, false),
            f("audio_input_tokens", DataType::Int64, false),
            f("audio_output_tokens", DataType::Int64, false),
            f("images", DataType::Int64, false),
            f("seconds", money_type(), true),
            f("characters", DataType::Int64, false),
            f("requests", DataType::Int64, false),
            f("price_id", dict(), false),
            f("price_version", DataType::Int64, false),
            f("currency", dict(), false),
            f("cost_input", money_type(), false),
            f("cost_cache_read", money_type(), false),
            f("cost_cache_write", money_type(), false),
            f("cost_output", money_type(), false),
            f("cost_reasoning", money_type(), false),
            f("cost_other", money_type(), false),
            f("cost_total", money_type(), false),
            f("gateway_reported_cost", money_type(), true),
            // Provenance: where the row came from, for exactly-once recovery and audits.
            f("kafka_partition", DataType::Int32, false),
            f("kafka_offset", DataType::Int64, false),
            // Added later (nullable: files written before read them as null).
            // `model` is the price entry's canonical name; this is the name the gateway sent.
            f("model_reported", dict(), true),
            // How the model name found its price (exact, alias, prefix_stripped, …).
            f("price_resolution", dict(), true),
            // Answered from the gateway's own cache: usage kept, cost zero.
            f("cache_hit", DataType::Boolean, true),
        ]))
    })
    .clone()
}
