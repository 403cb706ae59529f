//! Topic names: one place, so every stage and dashboard agrees.

/// Raw usage events from the edges. Key = attribution key. Value = UsageEvent.
pub const USAGE_RAW: &str = "meterline.usage.raw";
/// Priced, attributed usage. Partition = the raw partition it came from. Value = PricedUsage.
pub const USAGE_PRICED: &str = "meterline.usage.priced";
/// Events that could not be priced, with the reason in a header. Value = the original bytes.
pub const USAGE_REJECTED: &str = "meterline.usage.rejected";
/// Price book (compacted, key = price_id). Value = PriceChange.
pub const PRICES: &str = "meterline.prices";
/// Tenant directory (compacted, key = rule_id). Value = TenantChange.
pub const TENANTS: &str = "meterline.tenants";
/// Budgets (compacted, key = budget_id). Value = BudgetChange.
pub const BUDGETS: &str = "meterline.budgets";
/// Budget state (compacted, key = budget_id/scope). Value = BudgetSignal.
pub const BUDGET_SIGNALS: &str = "meterline.budget.signals";
/// Anomalies. Value = Anomaly.
pub const ANOMALIES: &str = "meterline.anomalies";
/// The lease of `meterline watch` (one partition, nothing written): the instance its group
/// (`<[watch.lease] group_id>-lease`) assigns partition 0 is the active one.
pub const WATCH_LEASE: &str = "meterline.watch.lease";

/// How a topic is laid out when meterline creates it (dev, tests); production clusters may
/// provision them themselves with at least these settings.
#[derive(Debug, Clone, Copy)]
pub struct TopicSpec {
    pub name: &'static str,
    pub partitions: i32,
    pub compacted: bool,
    /// Never deleted by time (`retention.ms = -1`): the priced usage is the log the ledger is
    /// re-derived from (`meterline rebuild`), so the broker's 7-day default would make every
    /// rebuild after a week a partial one.
    pub kept_forever: bool,
}

/// Every topic of the pipeline. Usage topics share one partition count so that enrich can
/// keep an event on the partition number it arrived on.
pub fn all(usage_partitions: i32) -> [TopicSpec; 9] {
    [
        TopicSpec {
            name: USAGE_RAW,
            partitions: usage_partitions,
            compacted: false,
            kept_forever: false,
        },
        TopicSpec {
            name: USAGE_PRICED,
            partitions: usage_partitions,
            compacted: false,
            kept_forever: true,
        },
        TopicSpec {
            name: USAGE_REJECTED,
            partitions: usage_partitions,
            compacted: false,
            kept_forever: false,
        },
        TopicSpec {
            name: PRICES,
            partitions: 1,
            compacted: true,
            kept_forever: false,
        },
        TopicSpec {
            name: TENANTS,
            partitions: 1,
            compacted: true,
            kept_forever: false,
        },
        TopicSpec {
            name: BUDGETS,
            partitions: 1,
            compacted: true,
            kept_forever: false,
        },
        TopicSpec {
            name: BUDGET_SIGNALS,
            partitions: 1,
            compacted: true,
            kept_forever: false,
        },
        TopicSpec {
            name: ANOMALIES,
            partitions: 1,
            compacted: false,
            kept_forever: false,
        },
        TopicSpec {
            name: WATCH_LEASE,
            partitions: 1,
            compacted: false,
            kept_forever: false,
        },
    ]
}

/// Record headers meterline writes (names shared by producers and readers).
pub mod headers {
    /// The event's `event_id` (priced and rejected records), so tools need not decode values.
    pub const EVENT_ID: &str = "ml-event-id";
    /// The event's `occurred_at`, µs since the epoch, decimal text.
    pub const OCCURRED_AT: &str = "ml-occurred-at";
    /// Priced records: the dedup watermark of the partition after this event (µs, decimal
    /// text). Rebuilding dedup state reads back from the end until it falls out of the window.
    pub const WATERMARK: &str = "ml-watermark";
    /// Priced records: fingerprint (hex) of the event's billable content; the same id with
    /// other content is an id conflict, not a duplicate.
    pub const FINGERPRINT: &str = "ml-fingerprint";
    /// Rejected records: the machine reason (`no_price`, `no_rate`, `undecodable`, …).
    pub const REASON_CODE: &str = "ml-reason-code";
    /// Rejected records: the field at fault (`model`, `usage.images`, `value`).
    pub const REASON_FIELD: &str = "ml-reason-field";
    /// Rejected records: the human-readable reason.
    pub const REASON: &str = "ml-reason";
    /// Rejected records: where the original came from (`topic/partition/offset`).
    pub const SOURCE: &str = "ml-source";
    /// Rejected records: how many times this event has been replayed before.
    pub const REPLAYS: &str = "ml-replays";
}
