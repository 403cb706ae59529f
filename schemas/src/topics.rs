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

/// How a topic is laid out when meterline creates it (dev, tests); production clusters may
/// provision them themselves with at least these settings.
#[derive(Debug, Clone, Copy)]
pub struct TopicSpec {
    pub name: &'static str,
    pub partitions: i32,
    pub compacted: bool,
}

/// Every topic of the pipeline. Usage topics share one partition count so that enrich can
/// keep an event on the partition number it arrived on.
pub fn all(usage_partitions: i32) -> [TopicSpec; 8] {
    [
        TopicSpec {
            name: USAGE_RAW,
            partitions: usage_partitions,
            compacted: false,
        },
        TopicSpec {
            name: USAGE_PRICED,
            partitions: usage_partitions,
            compacted: false,
        },
        TopicSpec {
            name: USAGE_REJECTED,
            partitions: usage_partitions,
            compacted: false,
        },
        TopicSpec {
            name: PRICES,
            partitions: 1,
            compacted: true,
        },
        TopicSpec {
            name: TENANTS,
            partitions: 1,
            compacted: true,
        },
        TopicSpec {
            name: BUDGETS,
            partitions: 1,
            compacted: true,
        },
        TopicSpec {
            name: BUDGET_SIGNALS,
            partitions: 1,
            compacted: true,
        },
        TopicSpec {
            name: ANOMALIES,
            partitions: 1,
            compacted: false,
        },
    ]
}
