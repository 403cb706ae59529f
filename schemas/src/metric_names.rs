//! Prometheus metric names: constants in one place so dashboards can rely on them.

// ingest
pub const INGEST_EVENTS_ACCEPTED: &str = "meterline_ingest_events_accepted_total";
pub const INGEST_EVENTS_REJECTED: &str = "meterline_ingest_events_rejected_total";
pub const INGEST_REQUESTS: &str = "meterline_ingest_requests_total";
pub const INGEST_EVENTS_SPOOLED: &str = "meterline_ingest_events_spooled_total";
pub const INGEST_SPOOL_DRAINED: &str = "meterline_ingest_spool_drained_total";
pub const INGEST_SPOOL_DEPTH_EVENTS: &str = "meterline_ingest_spool_depth_events";
pub const INGEST_SPOOL_DEPTH_BYTES: &str = "meterline_ingest_spool_depth_bytes";
pub const INGEST_SPOOL_FULL: &str = "meterline_ingest_spool_full_total";
pub const INGEST_PRODUCE_LATENCY: &str = "meterline_ingest_produce_latency_seconds";
pub const INGEST_PRODUCE_ERRORS: &str = "meterline_ingest_produce_errors_total";
pub const INGEST_MODE_SPOOLING: &str = "meterline_ingest_spooling";
pub const INGEST_DEAD_LETTERED: &str = "meterline_ingest_dead_lettered_total";

// label keys
pub const LABEL_FORMAT: &str = "format";
pub const LABEL_REASON: &str = "reason";
pub const LABEL_STATUS: &str = "status";
