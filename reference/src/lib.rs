//! Reference data every stage and the API agree on: the effective-dated price book and its
//! importers (LiteLLM catalog, native TOML/JSON), the tenant directory, the one view of budgets
//! and their signals, and reading/publishing them on their topics.
//!
//! - `price_book`, `history`: prices in force at a time; `litellm`, `native`: importers.
//! - `tenants`: which org/team/project an event belongs to.
//! - `budgets`: budget definitions (periods, webhooks, validation, drafts, load/publish);
//!   `budget_view`: budgets and the signal in force for each (the edge and the report).
//! - `loader`: reads prices and tenants to the topics' end, then follows them;
//!   `publish`: versions and publishes changes.

pub mod budget_view;
pub mod budgets;
mod history;
pub mod litellm;
pub mod loader;
pub mod native;
pub mod price_book;
pub mod publish;
pub mod tenants;

pub use budget_view::BudgetView;

/// Errors reading or publishing reference data.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Reading the topics (`meterline-runtime`): the follower, topic metadata.
    #[error(transparent)]
    Runtime(#[from] meterline_runtime::Error),
    #[error("codec: {0}")]
    Codec(#[source] meterline_schemas::Error),
    /// A budget definition that cannot be published or evaluated (which budget, why).
    #[error("{0}")]
    Budget(String),
}

impl Error {
    pub fn kafka(e: rdkafka::error::KafkaError) -> Error {
        Error::Kafka(e)
    }
    pub fn codec(e: meterline_schemas::Error) -> Error {
        Error::Codec(e)
    }

    /// Whether waiting and trying again can help (the broker may come back).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Kafka(e) => meterline_runtime::kafka::retryable(e),
            Error::Runtime(e) => e.is_retryable(),
            Error::Codec(_) | Error::Budget(_) => false,
        }
    }
}
