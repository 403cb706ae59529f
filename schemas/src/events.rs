//! Rust mirrors of the `.avsc` records (the `.avsc` files are the source of truth; the codec
//! tests prove every type round-trips through its schema). Field order matches the schema
//! order because the Avro writer serialises fields in declaration order.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::money::Money;
use crate::time::{micros, micros_opt};

/// Kind of model call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    Chat,
    Completion,
    Embedding,
    Image,
    Audio,
    Realtime,
    Rerank,
    Moderation,
    #[default]
    Other,
}

impl Operation {
    pub const ALL: [Operation; 9] = [
        Operation::Chat,
        Operation::Completion,
        Operation::Embedding,
        Operation::Image,
        Operation::Audio,
        Operation::Realtime,
        Operation::Rerank,
        Operation::Moderation,
        Operation::Other,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Operation::Chat => "chat",
            Operation::Completion => "completion",
            Operation::Embedding => "embedding",
            Operation::Image => "image",
            Operation::Audio => "audio",
            Operation::Realtime => "realtime",
            Operation::Rerank => "rerank",
            Operation::Moderation => "moderation",
            Operation::Other => "other",
        }
    }

    pub fn parse(s: &str) -> Option<Operation> {
        Operation::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

/// Provider service tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceTier {
    #[default]
    Standard,
    Batch,
    Priority,
    Flex,
}

impl ServiceTier {
    pub fn as_str(&self) -> &'static str {
        match self {
            ServiceTier::Standard => "standard",
            ServiceTier::Batch => "batch",
            ServiceTier::Priority => "priority",
            ServiceTier::Flex => "flex",
        }
    }

    /// Accepts the names providers use (`default`, `auto`, `scale` are standard capacity).
    pub fn parse(s: &str) -> Option<ServiceTier> {
        match s.to_ascii_lowercase().as_str() {
            "standard" | "default" | "auto" | "scale" | "on_demand" => Some(ServiceTier::Standard),
            "batch" => Some(ServiceTier::Batch),
            "priority" => Some(ServiceTier::Priority),
            "flex" => Some(ServiceTier::Flex),
            _ => None,
        }
    }
}

/// Call outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallStatus {
    #[default]
    Success,
    Error,
}

impl CallStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            CallStatus::Success => "success",
            CallStatus::Error => "error",
        }
    }
}

/// Billable quantities in disjoint buckets (see `usage_event.avsc`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Usage {
    pub input_tokens: i64,
    pub cache_read_tokens: i64,
    pub cache_write_5m_tokens: i64,
    pub cache_write_1h_tokens: i64,
    pub output_tokens: i64,
    pub reasoning_tokens: i64,
    pub audio_input_tokens: i64,
    pub audio_output_tokens: i64,
    pub images: i64,
    pub seconds: Option<Money>,
    pub characters: i64,
    pub requests: i64,
}

impl Usage {
    /// Every input token of the request, cached or not: what context-length tiers look at.
    /// `None` if the sum overflows i64 (only a corrupt record can get there).
    pub fn total_input_tokens(&self) -> Option<i64> {
        [
            self.cache_read_tokens,
            self.cache_write_5m_tokens,
            self.cache_write_1h_tokens,
            self.audio_input_tokens,
        ]
        .iter()
        .try_fold(self.input_tokens, |a, b| a.checked_add(*b))
    }

    pub fn total_output_tokens(&self) -> i64 {
        self.output_tokens + self.reasoning_tokens + self.audio_output_tokens
    }

    /// Named integer quantities, for validation and reporting.
    pub fn counts(&self) -> [(&'static str, i64); 11] {
        [
            ("input_tokens", self.input_tokens),
            ("cache_read_tokens", self.cache_read_tokens),
            ("cache_write_5m_tokens", self.cache_write_5m_tokens),
            ("cache_write_1h_tokens", self.cache_write_1h_tokens),
            ("output_tokens", self.output_tokens),
            ("reasoning_tokens", self.reasoning_tokens),
            ("audio_input_tokens", self.audio_input_tokens),
            ("audio_output_tokens", self.audio_output_tokens),
            ("images", self.images),
            ("characters", self.characters),
            ("requests", self.requests),
        ]
    }

    pub fn is_empty(&self) -> bool {
        self.counts().iter().all(|(_, v)| *v == 0) && self.seconds.is_none_or(|s| s.is_zero())
    }
}

/// One model call seen by a gateway edge (topic `meterline.usage.raw`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageEvent {
    pub event_id: String,
    #[serde(with = "micros")]
    pub occurred_at: DateTime<Utc>,
    #[serde(with = "micros")]
    pub received_at: DateTime<Utc>,
    pub source: String,
    pub format: String,
    pub request_id: Option<String>,
    pub api_key_id: Option<String>,
    pub user_id: Option<String>,
    pub team_id: Option<String>,
    pub org_id: Option<String>,
    pub project_id: Option<String>,
    pub end_user: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub agent_id: Option<String>,
    pub workflow_id: Option<String>,
    pub session_id: Option<String>,
    pub provider: String,
    pub model: String,
    pub operation: Operation,
    pub usage: Usage,
    pub service_tier: ServiceTier,
    pub status: CallStatus,
    pub http_status: Option<i32>,
    pub latency_ms: Option<i64>,
    pub ttft_ms: Option<i64>,
    pub region: Option<String>,
    pub gateway_reported_cost: Option<Money>,
    /// Answered from the gateway's own response cache (no provider call): billed at zero.
    #[serde(default)]
    pub cache_hit: bool,
}

impl UsageEvent {
    /// The Kafka key: the most specific attribution key present. Every copy of one event
    /// carries the same attribution, so duplicates share a partition (enrich dedups per
    /// partition).
    pub fn partition_key(&self) -> &str {
        self.api_key_id
            .as_deref()
            .or(self.user_id.as_deref())
            .or(self.team_id.as_deref())
            .or(self.org_id.as_deref())
            .or(self.end_user.as_deref())
            .unwrap_or("unattributed")
    }

    /// A minimal valid event (one chat call, 100 input and 20 output tokens on `openai/gpt-4o`),
    /// for tests, benchmarks and docs to start from.
    pub fn example() -> UsageEvent {
        let at = DateTime::from_timestamp(1_767_225_600, 0).unwrap_or_default(); // 2026-01-01
        UsageEvent {
            event_id: "example-1".into(),
            occurred_at: at,
            received_at: at,
            source: "example".into(),
            format: "native".into(),
            request_id: None,
            api_key_id: Some("key-1".into()),
            user_id: None,
            team_id: Some("team-1".into()),
            org_id: Some("org-1".into()),
            project_id: None,
            end_user: None,
            tags: BTreeMap::new(),
            agent_id: None,
            workflow_id: None,
            session_id: None,
            provider: "openai".into(),
            model: "gpt-4o".into(),
            operation: Operation::Chat,
            usage: Usage {
                input_tokens: 100,
                output_tokens: 20,
                ..Usage::default()
            },
            service_tier: ServiceTier::Standard,
            status: CallStatus::Success,
            http_status: Some(200),
            latency_ms: None,
            ttft_ms: None,
            region: None,
            gateway_reported_cost: None,
            cache_hit: false,
        }
    }
}

/// Position in the org hierarchy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct TenantPath {
    pub org: String,
    pub business_unit: Option<String>,
    pub cost_center: Option<String>,
    pub team: Option<String>,
    pub project: Option<String>,
    pub environment: Option<String>,
}

/// Cost lines of one event; `total` is their exact sum.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CostLines {
    pub input: Money,
    pub cache_read: Money,
    pub cache_write: Money,
    pub output: Money,
    pub reasoning: Money,
    pub other: Money,
    pub total: Money,
}

/// A priced, attributed event (topic `meterline.usage.priced`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PricedUsage {
    pub event: UsageEvent,
    pub tenant: TenantPath,
    pub tenant_rule_id: Option<String>,
    pub price_id: String,
    pub price_version: i64,
    /// How the model name found its price (`PriceResolution::as_str`).
    pub price_resolution: String,
    /// The price entry's canonical model name (reports group by it).
    pub model: String,
    pub currency: String,
    pub cost: CostLines,
    #[serde(with = "micros")]
    pub priced_at: DateTime<Utc>,
}

impl PricedUsage {
    /// The model name reports group by: the price entry's canonical name (one model, one
    /// name), or the reported name in records written before it was recorded.
    pub fn billed_model(&self) -> &str {
        if self.model.is_empty() {
            &self.event.model
        } else {
            &self.model
        }
    }

    /// `event` priced by an exact price `p` (version 1): `total` in USD, all of it output
    /// cost, attributed to team `team` of org `acme`. For tests, benchmarks and docs to start
    /// from (like [`UsageEvent::example`]).
    pub fn example(event: UsageEvent, team: &str, total: Money) -> PricedUsage {
        PricedUsage {
            event,
            tenant: TenantPath {
                org: "acme".into(),
                team: Some(team.into()),
                ..Default::default()
            },
            tenant_rule_id: None,
            price_id: "p".into(),
            price_version: 1,
            price_resolution: "exact".into(),
            model: String::new(),
            currency: "USD".into(),
            cost: CostLines {
                output: total,
                total,
                ..Default::default()
            },
            priced_at: Utc::now(),
        }
    }
}

/// One unit price of a price book entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    pub unit: String,
    pub tier: String,
    pub above_input_tokens: i64,
    pub price: Money,
}

/// A version of a price book entry (topic `meterline.prices`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PriceChange {
    pub price_id: String,
    pub version: i64,
    pub provider: String,
    pub model: String,
    pub aliases: Vec<String>,
    pub currency: String,
    pub rates: Vec<Rate>,
    #[serde(with = "micros")]
    pub effective_from: DateTime<Utc>,
    #[serde(with = "micros_opt")]
    pub effective_to: Option<DateTime<Utc>>,
    pub deleted: bool,
    pub author: String,
    pub reason: String,
    pub source: String,
    #[serde(with = "micros")]
    pub changed_at: DateTime<Utc>,
}

/// Attribution keys a tenant rule matches.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TenantMatch {
    pub api_key_id: Option<String>,
    pub user_id: Option<String>,
    pub team_id: Option<String>,
    pub org_id: Option<String>,
    pub end_user: Option<String>,
    pub tag_key: Option<String>,
    pub tag_value: Option<String>,
}

/// A version of a tenant rule (topic `meterline.tenants`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantChange {
    pub rule_id: String,
    pub version: i64,
    #[serde(rename = "match")]
    pub matches: TenantMatch,
    pub priority: i32,
    pub tenant: TenantPath,
    #[serde(with = "micros")]
    pub effective_from: DateTime<Utc>,
    #[serde(with = "micros_opt")]
    pub effective_to: Option<DateTime<Utc>>,
    pub deleted: bool,
    pub author: String,
    pub reason: String,
    #[serde(with = "micros")]
    pub changed_at: DateTime<Utc>,
}

/// What a budget or anomaly is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScopeKind {
    Org,
    CostCenter,
    Team,
    Project,
    ApiKey,
    User,
    Tag,
    Model,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Scope {
    pub kind: ScopeKind,
    pub value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetAction {
    #[default]
    Notify,
    Throttle,
    Block,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeriodKind {
    Day,
    Week,
    Month,
    Custom,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Threshold {
    pub percent: i32,
    pub action: BudgetAction,
}

/// A version of a budget (topic `meterline.budgets`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetChange {
    pub budget_id: String,
    pub version: i64,
    pub name: String,
    pub scope: Scope,
    pub limit: Money,
    pub currency: String,
    pub period: PeriodKind,
    pub timezone: String,
    #[serde(with = "micros_opt")]
    pub custom_from: Option<DateTime<Utc>>,
    #[serde(with = "micros_opt")]
    pub custom_to: Option<DateTime<Utc>>,
    pub thresholds: Vec<Threshold>,
    pub webhooks: Vec<String>,
    #[serde(with = "micros")]
    pub effective_from: DateTime<Utc>,
    #[serde(with = "micros_opt")]
    pub effective_to: Option<DateTime<Utc>>,
    pub deleted: bool,
    pub author: String,
    pub reason: String,
    #[serde(with = "micros")]
    pub changed_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetState {
    Ok,
    Warning,
    Exceeded,
}

/// Budget state after a crossing (topic `meterline.budget.signals`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetSignal {
    pub budget_id: String,
    pub scope: Scope,
    #[serde(with = "micros")]
    pub period_start: DateTime<Utc>,
    #[serde(with = "micros")]
    pub period_end: DateTime<Utc>,
    pub state: BudgetState,
    pub spend: Money,
    pub limit: Money,
    pub currency: String,
    pub threshold_percent: Option<i32>,
    pub action: BudgetAction,
    #[serde(with = "micros")]
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contributor {
    pub kind: String,
    pub value: String,
    pub spend: Money,
}

/// A spend or usage-mix anomaly (topic `meterline.anomalies`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    pub anomaly_id: String,
    pub scope: Scope,
    pub model: Option<String>,
    pub kind: String,
    #[serde(with = "micros")]
    pub window_start: DateTime<Utc>,
    #[serde(with = "micros")]
    pub window_end: DateTime<Utc>,
    pub observed: Money,
    pub expected: Money,
    pub score: f64,
    pub method: String,
    pub top_contributors: Vec<Contributor>,
    #[serde(with = "micros")]
    pub at: DateTime<Utc>,
}
