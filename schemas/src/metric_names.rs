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

// enrich
pub const ENRICH_EVENTS_IN: &str = "meterline_enrich_events_in_total";
pub const ENRICH_EVENTS_PRICED: &str = "meterline_enrich_events_priced_total";
pub const ENRICH_EVENTS_REJECTED: &str = "meterline_enrich_events_rejected_total";
pub const ENRICH_DUPLICATES_DROPPED: &str = "meterline_enrich_duplicates_dropped_total";
pub const ENRICH_LATE_EVENTS: &str = "meterline_enrich_late_events_total";
pub const ENRICH_UNATTRIBUTED: &str = "meterline_enrich_unattributed_events_total";
pub const ENRICH_TXN_COMMITS: &str = "meterline_enrich_transactions_committed_total";
pub const ENRICH_TXN_ABORTS: &str = "meterline_enrich_transactions_aborted_total";
pub const ENRICH_TXN_RECORDS: &str = "meterline_enrich_transaction_records";
pub const ENRICH_COMMIT_LATENCY: &str = "meterline_enrich_commit_latency_seconds";
pub const ENRICH_DEDUP_IDS: &str = "meterline_enrich_dedup_window_ids";
pub const ENRICH_REBUILD_SECONDS: &str = "meterline_enrich_dedup_rebuild_seconds";
/// Times a stage restarted its Kafka work after a retryable error (broker faults).
pub const ENRICH_STAGE_RESTARTS: &str = "meterline_enrich_stage_restarts_total";
pub const AGGREGATE_STAGE_RESTARTS: &str = "meterline_aggregate_stage_restarts_total";
pub const WATCH_STAGE_RESTARTS: &str = "meterline_watch_stage_restarts_total";
pub const ENRICH_CONSUMER_LAG: &str = "meterline_enrich_consumer_lag";
pub const ENRICH_BACKLOG_DRAIN_SECONDS: &str = "meterline_enrich_backlog_drain_seconds";
pub const ENRICH_REFERENCE_RECORDS: &str = "meterline_enrich_reference_records_total";

// aggregate
pub const AGGREGATE_ROWS_WRITTEN: &str = "meterline_aggregate_rows_written_total";
pub const AGGREGATE_FILES_WRITTEN: &str = "meterline_aggregate_files_written_total";
pub const AGGREGATE_BYTES_WRITTEN: &str = "meterline_aggregate_bytes_written_total";
pub const AGGREGATE_FLUSH_SECONDS: &str = "meterline_aggregate_flush_seconds";
pub const AGGREGATE_FLUSH_ROWS: &str = "meterline_aggregate_flush_rows";
pub const AGGREGATE_WRITE_ERRORS: &str = "meterline_aggregate_write_errors_total";
/// Flushes refused because another writer moved the partition on (a rebalance, a stall).
pub const AGGREGATE_FENCED: &str = "meterline_aggregate_fenced_flushes_total";
pub const AGGREGATE_POISON: &str = "meterline_aggregate_poison_records_total";
pub const AGGREGATE_BUFFERED_ROWS: &str = "meterline_aggregate_buffered_rows";
pub const AGGREGATE_CONSUMER_LAG: &str = "meterline_aggregate_consumer_lag";
pub const AGGREGATE_BACKLOG_DRAIN_SECONDS: &str = "meterline_aggregate_backlog_drain_seconds";
pub const AGGREGATE_BUDGET_SIGNALS: &str = "meterline_aggregate_budget_signals_total";
/// From ingest accepting an event (`received_at`) to the budget state including it.
pub const AGGREGATE_BUDGET_LAG_SECONDS: &str = "meterline_aggregate_budget_lag_seconds";
pub const AGGREGATE_BUDGET_REBUILD_SECONDS: &str = "meterline_aggregate_budget_rebuild_seconds";
pub const AGGREGATE_ANOMALIES: &str = "meterline_aggregate_anomalies_total";

// watch
/// 1 while this `meterline watch` instance holds the lease and runs the tracker and alert
/// delivery, 0 while it is a standby: summed over instances it should be 1.
pub const WATCH_ACTIVE: &str = "meterline_watch_active";

// alerts (webhook delivery, in the aggregate process)
/// Deliveries by `outcome`: `delivered`, `failed` (gave up after the last retry), `retried`.
pub const ALERT_DELIVERIES: &str = "meterline_alert_deliveries_total";
pub const ALERT_DELIVERY_SECONDS: &str = "meterline_alert_delivery_seconds";

// api
/// A query's time on the query runtime, from its start to its end or abort (a streamed
/// answer counts until its last row is handed to the client).
pub const API_QUERY_SECONDS: &str = "meterline_api_query_seconds";
pub const API_QUERIES_RUNNING: &str = "meterline_api_queries_running";

// enforcement (at the edge)
pub const ENFORCEMENT_CHECKS: &str = "meterline_enforcement_checks_total";

// label keys
pub const LABEL_STATE: &str = "state";
pub const LABEL_OUTCOME: &str = "outcome";
pub const LABEL_DECISION: &str = "decision";
pub const LABEL_KIND: &str = "kind";
pub const LABEL_FORMAT: &str = "format";
pub const LABEL_REASON: &str = "reason";
pub const LABEL_STATUS: &str = "status";
pub const LABEL_PARTITION: &str = "partition";
pub const LABEL_TOPIC: &str = "topic";
