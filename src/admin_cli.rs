//! `meterline prices | tenants | rejected`: configuration as events, and the rejected queue.

use std::path::PathBuf;

use anyhow::Context;
use chrono::{DateTime, Utc};
use meterline_enrich::admin;
use meterline_reference::publish::{self, Publication};
use meterline_reference::{litellm, native, tenants};
use meterline_runtime::kafka::{ensure_topics, KafkaConfig};
use meterline_schemas::{topics, PriceChange};

use crate::progress::Progress;

#[derive(clap::Subcommand, Debug)]
pub enum PricesCmd {
    /// Publishes a price file as PriceChange events (new and changed entries only).
    Import(ImportArgs),
    /// What `import` would publish, without publishing.
    Diff(ImportArgs),
    /// The latest version of every price.
    List,
    /// Every version of one price, with its rates.
    Show { price_id: String },
    /// Which price a call of MODEL from PROVIDER gets, and how the name found it (exact,
    /// alias, prefix_stripped, snapshot_stripped); never another provider's price.
    Resolve {
        provider: String,
        model: String,
        /// The call's time (RFC 3339); default now.
        #[arg(long, value_parser = meterline_schemas::time::parse_rfc3339)]
        at: Option<DateTime<Utc>>,
    },
}

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// LiteLLM's model_prices_and_context_window.json, or a native TOML/JSON price file.
    pub file: PathBuf,
    /// `litellm` or `native`; default: litellm for files named model_prices*.json, else native.
    #[arg(long)]
    pub format: Option<String>,
    /// When the prices apply (RFC 3339). Required for LiteLLM files and for native entries
    /// without their own `effective_from`.
    #[arg(long, value_parser = meterline_schemas::time::parse_rfc3339)]
    pub effective_from: Option<DateTime<Utc>>,
    /// Why (kept with every change).
    #[arg(long, default_value = "price import")]
    pub reason: String,
    #[arg(long, env = "USER", default_value = "meterline")]
    pub author: String,
}

#[derive(clap::Subcommand, Debug)]
pub enum TenantsCmd {
    /// Publishes tenant rules (CSV or YAML) as TenantChange events.
    Import {
        file: PathBuf,
        #[arg(long, value_parser = meterline_schemas::time::parse_rfc3339)]
        effective_from: Option<DateTime<Utc>>,
        #[arg(long, default_value = "tenant import")]
        reason: String,
        #[arg(long, env = "USER", default_value = "meterline")]
        author: String,
        #[arg(long)]
        dry_run: bool,
    },
    /// The latest version of every rule.
    List,
}

#[derive(clap::Subcommand, Debug)]
pub enum RejectedCmd {
    /// Rejected events not yet replayed (`--all`: every one kept on the topic).
    List {
        #[arg(long)]
        all: bool,
        /// One JSON array of the records (without their payload bytes).
        #[arg(long)]
        json: bool,
    },
    /// Re-submits pending rejections once (to be priced with the reference data of now).
    Replay,
}

fn print_publication(what: &str, p: &Publication, dry_run: bool) {
    let verb = if dry_run {
        "would publish"
    } else {
        "published"
    };
    for (id, v) in &p.added {
        println!("+ {id} v{v}");
    }
    for (id, v) in &p.changed {
        println!("~ {id} v{v}");
    }
    println!(
        "{what}: {verb} {} new, {} changed; {} unchanged",
        p.added.len(),
        p.changed.len(),
        p.unchanged.len()
    );
}

fn read_price_file(a: &ImportArgs) -> anyhow::Result<Vec<PriceChange>> {
    let text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("reading {}", a.file.display()))?;
    let name = a.file.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let format = a.format.clone().unwrap_or_else(|| {
        if name.starts_with("model_prices") {
            "litellm".into()
        } else {
            "native".into()
        }
    });
    let source = a.file.display().to_string();
    match format.as_str() {
        "litellm" => {
            let from = a
                .effective_from
                .context("--effective-from is required for a LiteLLM catalog")?;
            let import = litellm::import(&text, from, &a.author, &source)?;
            eprintln!(
                "LiteLLM catalog: {} entries priced, {} skipped (no unit meterline prices), {} values rounded from float noise",
                import.changes.len(),
                import.skipped_entries.len(),
                import.rounded_values
            );
            Ok(import.changes)
        }
        "native" => Ok(native::parse(
            &text,
            native::Syntax::of_path(&a.file),
            a.effective_from,
            &a.author,
            &source,
        )?),
        other => anyhow::bail!("unknown --format {other} (litellm or native)"),
    }
}

async fn topics_ready(kafka: &KafkaConfig) -> anyhow::Result<()> {
    if kafka.create_topics {
        ensure_topics(kafka, &topics::all(kafka.usage_partitions)).await?;
    }
    Ok(())
}

/// Runs blocking Kafka admin work off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f).await?
}

/// `publish::publish_prices` with progress (a LiteLLM catalog has thousands of entries).
fn publish_prices(
    kafka: &KafkaConfig,
    drafts: Vec<PriceChange>,
    reason: &str,
    dry_run: bool,
) -> anyhow::Result<Publication> {
    let label = if dry_run {
        "prices diff"
    } else {
        "prices import"
    };
    let mut progress = Progress::new(label, "entries", Some(drafts.len() as u64), false);
    let p = publish::publish_prices_with_progress(kafka, drafts, reason, dry_run, |done, _| {
        progress.update(done as u64, String::new)
    })?;
    progress.finish("");
    Ok(p)
}

pub async fn prices(kafka: KafkaConfig, cmd: PricesCmd) -> anyhow::Result<()> {
    topics_ready(&kafka).await?;
    blocking(move || {
        match cmd {
            PricesCmd::Import(a) => {
                let drafts = read_price_file(&a)?;
                let p = publish_prices(&kafka, drafts, &a.reason, false)?;
                print_publication("prices", &p, false);
            }
            PricesCmd::Diff(a) => {
                let drafts = read_price_file(&a)?;
                let p = publish_prices(&kafka, drafts, &a.reason, true)?;
                print_publication("prices", &p, true);
            }
            PricesCmd::List => {
                let r = publish::load(&kafka)?;
                let book = r.prices.read().expect("price book");
                let mut latest: Vec<&PriceChange> = book.latest().collect();
                latest.sort_by(|a, b| a.price_id.cmp(&b.price_id));
                println!(
                    "{:<56} {:>4} {:<14} {:<25} rates",
                    "price_id", "ver", "provider", "effective_from"
                );
                for c in latest {
                    println!(
                        "{:<56} {:>4} {:<14} {:<25} {}{}",
                        c.price_id,
                        c.version,
                        c.provider,
                        c.effective_from.to_rfc3339(),
                        c.rates.len(),
                        if c.deleted { " (retired)" } else { "" }
                    );
                }
            }
            PricesCmd::Resolve {
                provider,
                model,
                at,
            } => {
                let r = publish::load(&kafka)?;
                let book = r.prices.read().expect("price book");
                let at = at.unwrap_or_else(Utc::now);
                match book.price_at(&provider, &model, at) {
                    Some((c, how)) => println!(
                        "{provider}/{model} at {} → {} v{} (provider {}, model {}) by {}",
                        at.to_rfc3339(),
                        c.price_id,
                        c.version,
                        c.provider,
                        c.model,
                        how.as_str()
                    ),
                    None => anyhow::bail!(
                        "no price for {provider}/{model} at {} (provider family {}): such events are rejected as no_price",
                        at.to_rfc3339(),
                        meterline_reference::price_book::provider_family(&provider)
                    ),
                }
            }
            PricesCmd::Show { price_id } => {
                let r = publish::load(&kafka)?;
                let book = r.prices.read().expect("price book");
                let versions = book.versions(&price_id);
                anyhow::ensure!(!versions.is_empty(), "no price {price_id}");
                for v in versions {
                    println!(
                        "{} v{}  {} → {}  {}  by {}: {}",
                        v.price_id,
                        v.version,
                        v.effective_from.to_rfc3339(),
                        v.effective_to
                            .map(|t| t.to_rfc3339())
                            .unwrap_or_else(|| "open".into()),
                        v.currency,
                        v.author,
                        v.reason
                    );
                    for rate in &v.rates {
                        let above = if rate.above_input_tokens > 0 {
                            format!(" above {} input tokens", rate.above_input_tokens)
                        } else {
                            String::new()
                        };
                        println!(
                            "    {:<22} {:<9} {}{above}",
                            rate.unit, rate.tier, rate.price
                        );
                    }
                }
            }
        }
        Ok(())
    })
    .await
}

pub async fn tenants(kafka: KafkaConfig, cmd: TenantsCmd) -> anyhow::Result<()> {
    topics_ready(&kafka).await?;
    blocking(move || {
        match cmd {
            TenantsCmd::Import {
                file,
                effective_from,
                reason,
                author,
                dry_run,
            } => {
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?;
                let drafts = match file.extension().and_then(|e| e.to_str()) {
                    Some("csv") => tenants::parse_csv(&text, effective_from, &author)?,
                    _ => tenants::parse_yaml(&text, effective_from, &author)?,
                };
                let p = publish::publish_tenants(&kafka, drafts, &reason, dry_run)?;
                print_publication("tenant rules", &p, dry_run);
            }
            TenantsCmd::List => {
                let r = publish::load(&kafka)?;
                let dir = r.tenants.read().expect("tenants");
                let mut rules: Vec<_> = dir.latest().collect();
                rules.sort_by(|a, b| a.rule_id.cmp(&b.rule_id));
                for t in rules {
                    println!(
                        "{} v{} prio {}  {:?} → {}/{}/{}/{}  from {}",
                        t.rule_id,
                        t.version,
                        t.priority,
                        t.matches,
                        t.tenant.org,
                        t.tenant.business_unit.as_deref().unwrap_or("-"),
                        t.tenant.cost_center.as_deref().unwrap_or("-"),
                        t.tenant.team.as_deref().unwrap_or("-"),
                        t.effective_from.to_rfc3339()
                    );
                }
            }
        }
        Ok(())
    })
    .await
}

pub async fn rejected(kafka: KafkaConfig, cmd: RejectedCmd) -> anyhow::Result<()> {
    topics_ready(&kafka).await?;
    blocking(move || {
        match cmd {
            RejectedCmd::List { all, json } => {
                let rs = admin::rejected(&kafka, all)?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&rs)?);
                    return Ok(());
                }
                for r in &rs {
                    let state = match (r.replayed, r.replayable) {
                        (true, true) => "replayed",
                        (true, false) => "passed over",
                        (false, true) => "pending",
                        (false, false) => "not replayable",
                    };
                    println!(
                        "{}/{}  {}  {}  {}: {} [{state}; {} earlier replay(s); from {}]",
                        r.partition,
                        r.offset,
                        r.event_id.as_deref().unwrap_or("?"),
                        r.code,
                        r.field,
                        r.reason,
                        r.replays,
                        r.source
                    );
                }
                println!("{} rejected event(s)", rs.len());
            }
            RejectedCmd::Replay => {
                let r = admin::replay(&kafka)?;
                println!(
                    "replayed {}; {} duplicate id(s) sent once; {} not replayable (undecodable or no billable quantity)",
                    r.replayed, r.duplicates, r.not_replayable
                );
            }
        }
        Ok(())
    })
    .await
}

#[derive(clap::Subcommand, Debug)]
pub enum BudgetsCmd {
    /// Creates a budget, or publishes a new version of an existing one (same id).
    Create(BudgetArgs),
    /// The current budgets (`--all`: deleted ones too).
    List {
        #[arg(long)]
        all: bool,
    },
    /// Deletes a budget (a new version marked deleted; the history stays on the topic).
    Delete {
        budget_id: String,
        #[arg(long, default_value = "deleted")]
        reason: String,
        #[arg(long, env = "USER", default_value = "meterline")]
        author: String,
    },
}

#[derive(clap::Args, Debug)]
pub struct BudgetArgs {
    /// Stable id (the compaction key); a second `create` with it publishes a new version.
    pub budget_id: String,
    /// What it counts: `org=…`, `cost_center=…`, `team=…`, `project=…`, `api_key=…`,
    /// `user=…`, `tag=key=value`, `model=provider/model`.
    #[arg(long)]
    pub scope: String,
    /// Limit in `currency`, exact decimal text.
    #[arg(long)]
    pub limit: meterline_schemas::Money,
    #[arg(long, default_value = "USD")]
    pub currency: String,
    /// `day`, `week` (ISO, Monday), `month` (calendar) or `custom` (with --from/--to).
    #[arg(long, default_value = "month")]
    pub period: String,
    /// IANA time zone the periods follow.
    #[arg(long, default_value = "UTC")]
    pub timezone: String,
    #[arg(long, value_parser = meterline_schemas::time::parse_rfc3339)]
    pub from: Option<DateTime<Utc>>,
    #[arg(long, value_parser = meterline_schemas::time::parse_rfc3339)]
    pub to: Option<DateTime<Utc>>,
    /// `percent:action,…` with action notify | throttle | block.
    #[arg(long, default_value = "50:notify,80:notify,100:block")]
    pub thresholds: String,
    /// Receivers of this budget's crossings (repeatable); prefix `slack+` for Slack's shape.
    #[arg(long = "webhook")]
    pub webhooks: Vec<String>,
    /// Display name (default: the id).
    #[arg(long)]
    pub name: Option<String>,
    /// From when it applies; default: the start of the current period, so the period's
    /// spend so far counts.
    #[arg(long, value_parser = meterline_schemas::time::parse_rfc3339)]
    pub effective_from: Option<DateTime<Utc>>,
    #[arg(long, default_value = "budget change")]
    pub reason: String,
    #[arg(long, env = "USER", default_value = "meterline")]
    pub author: String,
}

fn budget_of(a: BudgetArgs) -> anyhow::Result<meterline_schemas::BudgetChange> {
    Ok(meterline_reference::budgets::draft(
        meterline_reference::budgets::BudgetDraft {
            budget_id: a.budget_id,
            name: a.name,
            scope: a.scope,
            limit: a.limit,
            currency: a.currency,
            period: a.period,
            timezone: a.timezone,
            from: a.from,
            to: a.to,
            thresholds: a.thresholds,
            webhooks: a.webhooks,
            effective_from: a.effective_from,
            reason: a.reason,
        },
        &a.author,
        Utc::now(),
    )?)
}

fn print_budget(b: &meterline_schemas::BudgetChange) {
    let th: Vec<String> = b
        .thresholds
        .iter()
        .map(|t| format!("{}:{:?}", t.percent, t.action).to_lowercase())
        .collect();
    println!(
        "{} v{}{}  {}  {} {} per {:?} ({})  thresholds {}  from {}  webhooks {}",
        b.budget_id,
        b.version,
        if b.deleted { " (deleted)" } else { "" },
        b.scope.label(),
        b.limit,
        b.currency,
        b.period,
        b.timezone,
        th.join(","),
        b.effective_from.to_rfc3339(),
        b.webhooks.len()
    );
}

pub async fn budgets(kafka: KafkaConfig, cmd: BudgetsCmd) -> anyhow::Result<()> {
    use meterline_reference::budgets as budget_defs;
    topics_ready(&kafka).await?;
    blocking(move || {
        match cmd {
            BudgetsCmd::Create(a) => {
                let b = budget_defs::publish(&kafka, budget_of(a)?)?;
                print!("published ");
                print_budget(&b);
            }
            BudgetsCmd::List { all } => {
                for b in budget_defs::load(&kafka)?.values() {
                    if all || !b.deleted {
                        print_budget(b);
                    }
                }
            }
            BudgetsCmd::Delete {
                budget_id,
                reason,
                author,
            } => {
                let mut b = budget_defs::load(&kafka)?
                    .remove(&budget_id)
                    .with_context(|| format!("no budget {budget_id:?}"))?;
                b.deleted = true;
                b.reason = reason;
                b.author = author;
                let b = budget_defs::publish(&kafka, b)?;
                println!("deleted {} (v{})", b.budget_id, b.version);
            }
        }
        Ok(())
    })
    .await
}
