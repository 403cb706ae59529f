//! LiteLLM StandardLoggingPayload examples must reproduce their recorded `response_cost`.
//!
//! For each payload (copied verbatim into `tests/fixtures/`, see `ATTRIBUTION.md`; nothing is
//! read from outside this crate at test time): read provider, model, start time, service tier
//! and token counts from the payload JSON; import the LiteLLM catalog excerpt with the real
//! importer; look the entry up in a `PriceBook` the way enrich does (`price_at(provider, model,
//! occurred_at)`); price with `cost::price`; compare with `response_cost`.
//!
//! ## How a float `response_cost` is compared with an exact Decimal
//!
//! LiteLLM computes costs in f64: for these payloads `10 * 2.5e-06 + 20 * 1e-05`, which is the
//! f64 printed as `0.00022500000000000002`. The exact cost is 0.000225, but 0.000225's nearest
//! f64 is a DIFFERENT f64 (one ULP below), so the recorded text is already the shortest decimal
//! that round-trips to the recorded f64. The rule "our Decimal, converted to f64, equals the
//! recorded f64, and equals its shortest round-trip text" therefore cannot hold for an exact
//! cost; the `...02` is float noise from LiteLLM's own arithmetic, not information about the price.
//!
//! The rule used instead, all parts asserted:
//! 1. the recorded value is read as decimal TEXT (never via f64) and rounded half-even to 15
//!    significant digits (DBL_DIG: every decimal of ≤ 15 significant digits survives a trip
//!    through f64, and a few operations of f64 noise, ~1e-16 relative, sit below half a unit of
//!    the 15th digit); our exact total must EQUAL that value;
//! 2. LiteLLM's float formula (tokens × rate per bucket in f64, summed), with the rates the
//!    payload itself records in `model_map_information`, must reproduce the recorded f64
//!    bit-for-bit: this proves where the noise comes from and that the same prices were used;
//! 3. our total converted to f64 is within one ULP of the recorded f64 (exactly one here);
//! 4. the recorded rates in `model_map_information.model_map_value` equal the imported rates,
//!    and LiteLLM's `model_map_key` is the price_id our lookup found.
//!
//! (ingest keeps `response_cost` as `gateway_reported_cost` rounded half-even to 18 DECIMALS;
//! that coincides with rule 1 here, and is asserted too, but only removes float noise for costs
//! below about 0.01 USD: the noise is relative, so at 1 USD it sits near the 16th decimal.)

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use meterline_enrich::cost::{price, RateCard};
use meterline_enrich::pricing::enrich;
use meterline_reference::litellm::{classify, import};
use meterline_reference::price_book::PriceBook;
use meterline_reference::tenants::TenantDirectory;
use meterline_schemas::{CostLines, Money, ServiceTier, Usage, UsageEvent};
use rust_decimal::{Decimal, RoundingStrategy};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

const CATALOG: &str = include_str!("../../reference/tests/fixtures/litellm_catalog_excerpt.json");

struct Payload {
    file: &'static str,
    text: &'static str,
    /// Price book entry the lookup must find (and LiteLLM's `model_map_key`).
    price_id: &'static str,
    /// Hand-computed lines: input, cache_read, cache_write, output, reasoning, other, total.
    lines: [&'static str; 7],
    /// ULPs between f64(our exact total) and the recorded f64.
    ulps: u64,
}

fn payloads() -> Vec<Payload> {
    vec![
        Payload {
            file: "litellm_slp_gcs_pubsub_test.json",
            text: include_str!("fixtures/litellm_slp_gcs_pubsub_test.json"),
            price_id: "gpt-4o",
            // openai/gpt-4o, 10 prompt + 20 completion tokens, no cache/reasoning detail:
            // input 10 × 0.0000025 = 0.000025; output 20 × 0.00001 = 0.0002;
            // total 0.000025 + 0.0002 = 0.000225 (recorded 0.00022500000000000002)
            lines: ["0.000025", "0", "0", "0.0002", "0", "0", "0.000225"],
            ulps: 1,
        },
        Payload {
            file: "litellm_slp_azure_sentinel_example.json",
            text: include_str!("fixtures/litellm_slp_azure_sentinel_example.json"),
            price_id: "gpt-4o",
            // the same call with epoch-float times: same arithmetic, total 0.000225
            lines: ["0.000025", "0", "0", "0.0002", "0", "0", "0.000225"],
            ulps: 1,
        },
    ]
}

/// The parts of a StandardLoggingPayload this test reads; numbers that matter are kept as raw
/// JSON text so they are never routed through f64.
#[derive(Deserialize)]
#[allow(non_snake_case)]
struct Slp<'a> {
    custom_llm_provider: Option<String>,
    model: String,
    #[serde(borrow)]
    startTime: &'a RawValue,
    #[serde(borrow)]
    response_cost: &'a RawValue,
    prompt_tokens: i64,
    completion_tokens: i64,
    #[serde(borrow)]
    hidden_params: HiddenParams<'a>,
    #[serde(default)]
    response: Value,
    #[serde(default)]
    metadata: Value,
    #[serde(default)]
    cost_breakdown: Value,
    #[serde(borrow)]
    model_map_information: ModelMap<'a>,
}

#[derive(Deserialize)]
struct HiddenParams<'a> {
    #[serde(borrow)]
    response_cost: &'a RawValue,
    litellm_model_name: Option<String>,
    #[serde(default)]
    usage_object: Value,
}

#[derive(Deserialize)]
struct ModelMap<'a> {
    model_map_key: String,
    #[serde(borrow)]
    model_map_value: BTreeMap<String, &'a RawValue>,
}

/// A count at a dotted path of a usage object (missing or null = 0).
fn count(v: &Value, path: &str) -> i64 {
    let mut cur = v;
    for part in path.split('.') {
        match cur.get(part) {
            Some(x) => cur = x,
            None => return 0,
        }
    }
    match cur {
        Value::Null => 0,
        x => x
            .as_i64()
            .unwrap_or_else(|| panic!("{path}: not an integer count: {x}")),
    }
}

/// The usage object LiteLLM recorded (`response.usage`, else `metadata.usage_object`, else
/// `hidden_params.usage_object`), as ingest picks it; `None` if there is none.
fn usage_object<'v>(slp: &'v Slp) -> Option<&'v Value> {
    [
        slp.response.get("usage"),
        slp.metadata.get("usage_object"),
        Some(&slp.hidden_params.usage_object),
    ]
    .into_iter()
    .flatten()
    .find(|v| v.is_object())
}

/// OpenAI chat-completions convention (LiteLLM's Usage): `prompt_tokens` includes cached,
/// cache-write and audio tokens; `completion_tokens` includes reasoning and audio tokens.
/// Undone into meterline's disjoint buckets.
fn usage(slp: &Slp) -> Usage {
    let Some(v) = usage_object(slp) else {
        return Usage {
            input_tokens: slp.prompt_tokens,
            output_tokens: slp.completion_tokens,
            ..Default::default()
        };
    };
    let (prompt, completion) = (count(v, "prompt_tokens"), count(v, "completion_tokens"));
    assert_eq!(
        (prompt, completion),
        (slp.prompt_tokens, slp.completion_tokens),
        "usage object and top-level counts disagree"
    );
    let cached =
        count(v, "prompt_tokens_details.cached_tokens").max(count(v, "cache_read_input_tokens"));
    let audio_in = count(v, "prompt_tokens_details.audio_tokens");
    let writes = count(v, "prompt_tokens_details.cache_creation_tokens")
        .max(count(v, "cache_creation_input_tokens"));
    let w1h = count(v, "cache_creation_token_details.ephemeral_1h_input_tokens").max(count(
        v,
        "prompt_tokens_details.cache_creation_token_details.ephemeral_1h_input_tokens",
    ));
    let reasoning = count(v, "completion_tokens_details.reasoning_tokens");
    let audio_out = count(v, "completion_tokens_details.audio_tokens");
    Usage {
        input_tokens: prompt - cached - writes - audio_in,
        cache_read_tokens: cached,
        cache_write_5m_tokens: writes - w1h,
        cache_write_1h_tokens: w1h,
        output_tokens: completion - reasoning - audio_out,
        reasoning_tokens: reasoning,
        audio_input_tokens: audio_in,
        audio_output_tokens: audio_out,
        ..Default::default()
    }
}

/// `startTime`: epoch seconds (a JSON number, read as decimal text) or
/// `"YYYY-MM-DD HH:MM:SS.ffffff"` (UTC).
fn start_time(raw: &RawValue) -> DateTime<Utc> {
    let text = raw.get();
    if let Ok(s) = serde_json::from_str::<String>(text) {
        return NaiveDateTime::parse_from_str(&s, "%Y-%m-%d %H:%M:%S%.f")
            .unwrap_or_else(|e| panic!("startTime '{s}': {e}"))
            .and_utc();
    }
    let secs = Decimal::from_str_exact(text).unwrap_or_else(|e| panic!("startTime {text}: {e}"));
    let micros = (secs * Decimal::from(1_000_000))
        .round_dp_with_strategy(0, RoundingStrategy::MidpointNearestEven)
        .mantissa();
    Utc.timestamp_micros(micros as i64)
        .single()
        .expect("startTime in range")
}

fn decimal_text(text: &str) -> Decimal {
    if text.contains(['e', 'E']) {
        Decimal::from_scientific(text)
    } else {
        Decimal::from_str_exact(text)
    }
    .unwrap_or_else(|e| panic!("'{text}' is not a decimal: {e}"))
}

fn lines(c: &CostLines) -> [Money; 7] {
    [
        c.input,
        c.cache_read,
        c.cache_write,
        c.output,
        c.reasoning,
        c.other,
        c.total,
    ]
}

fn ulps_apart(a: f64, b: f64) -> u64 {
    assert!(a.is_finite() && b.is_finite() && a >= 0.0 && b >= 0.0);
    a.to_bits().abs_diff(b.to_bits())
}

fn check(p: &Payload) {
    let f = p.file;
    let slp: Slp = serde_json::from_str(p.text).unwrap_or_else(|e| panic!("{f}: {e}"));

    // ── what the payload says ──
    let provider = slp
        .custom_llm_provider
        .as_deref()
        .filter(|s| !s.is_empty())
        .expect("custom_llm_provider")
        .to_ascii_lowercase();
    let model = slp
        .hidden_params
        .litellm_model_name
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| slp.model.clone());
    let occurred_at = start_time(slp.startTime);
    let usage = usage(&slp);
    let tier = slp
        .cost_breakdown
        .get("service_tier")
        .and_then(Value::as_str)
        .and_then(ServiceTier::parse)
        .unwrap_or_default();
    let recorded_text = slp.response_cost.get();
    assert_eq!(
        slp.hidden_params.response_cost.get(),
        recorded_text,
        "{f}: hidden_params.response_cost differs from response_cost"
    );

    // ── the price, looked up as enrich does ──
    // Effective from a date before both payloads (2025-01-24 and 2025-12-17); rule 4 below
    // checks that the rates LiteLLM used for the call are the imported ones.
    let imported = import(
        CATALOG,
        Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap(),
        "test",
        "litellm 1.109.1",
    )
    .expect("catalog excerpt imports");
    let mut book = PriceBook::new();
    for c in imported.changes {
        book.apply(c);
    }
    let (entry, _) = book
        .price_at(&provider, &model, occurred_at)
        .unwrap_or_else(|| panic!("{f}: no price for {provider}/{model} at {occurred_at}"));
    assert_eq!(entry.price_id, p.price_id, "{f}: price book entry");
    assert_eq!(
        slp.model_map_information.model_map_key, entry.price_id,
        "{f}: LiteLLM priced the call with catalog key {}",
        slp.model_map_information.model_map_key
    );
    // rule 4: every non-null price the payload recorded equals the imported rate
    let mut compared = 0;
    for (field, raw) in &slp.model_map_information.model_map_value {
        let Some((u, t, above)) = classify(field) else {
            continue;
        };
        if raw.get() == "null" {
            continue;
        }
        let recorded: Money = raw
            .get()
            .parse()
            .unwrap_or_else(|e| panic!("{f}: {field} = {}: {e}", raw.get()));
        let ours = entry
            .rates
            .iter()
            .find(|r| r.unit == u && r.tier == t && r.above_input_tokens == above)
            .unwrap_or_else(|| panic!("{f}: {field} recorded but not imported"));
        assert_eq!(ours.price, recorded, "{f}: {field}");
        compared += 1;
    }
    assert!(
        compared >= 2,
        "{f}: compared only {compared} recorded rates"
    );

    // ── price it ──
    let card = RateCard {
        price_id: &entry.price_id,
        rates: &entry.rates,
    };
    let cost = price(&usage, tier, &card).unwrap_or_else(|e| panic!("{f}: {e}"));
    let want: Vec<Money> = p.lines.iter().map(|s| s.parse().unwrap()).collect();
    assert_eq!(lines(&cost).to_vec(), want, "{f}: cost lines");
    assert_eq!(
        lines(&cost)[..6].iter().fold(Money::ZERO, |a, b| a + *b),
        cost.total,
        "{f}: lines sum to the total"
    );

    // the full enrich path (price book lookup + cost + attribution) gives the same lines
    let mut event = UsageEvent::example();
    event.provider = provider.clone();
    event.model = model.clone();
    event.occurred_at = occurred_at;
    event.usage = usage.clone();
    event.service_tier = tier;
    let priced = enrich(event, &book, &TenantDirectory::new(), Utc::now())
        .unwrap_or_else(|r| panic!("{f}: rejected: {r:?}"));
    assert_eq!(
        (priced.price_id.as_str(), &priced.cost),
        (p.price_id, &cost),
        "{f}: enrich path"
    );

    // ── compare with response_cost ──
    let recorded_dec = decimal_text(recorded_text);
    let recorded_f64: f64 = recorded_text.parse().unwrap();
    // why the naive rule fails: the recorded text is the shortest round-trip form of its f64,
    // and it is not the exact cost
    assert_eq!(
        recorded_f64.to_string(),
        recorded_text,
        "{f}: shortest round-trip text"
    );
    // rule 1: exact equality after rounding the recorded decimal to 15 significant digits
    let recorded_15 = recorded_dec
        .round_sf_with_strategy(15, RoundingStrategy::MidpointNearestEven)
        .unwrap()
        .normalize();
    assert_eq!(
        cost.total.decimal(),
        recorded_15,
        "{f}: our total vs response_cost {recorded_text} rounded to 15 significant digits"
    );
    // what ingest stores as gateway_reported_cost (18 decimals, half-even) agrees here
    assert_eq!(
        Money::rounded(recorded_dec).unwrap(),
        cost.total,
        "{f}: 18-decimal rounding"
    );
    // rule 2: LiteLLM's float arithmetic, with the rates the payload recorded, gives the
    // recorded f64 bit-for-bit (only input and output are non-zero in these payloads)
    assert_eq!(
        (
            usage.cache_read_tokens,
            usage.cache_write_5m_tokens + usage.cache_write_1h_tokens,
            usage.reasoning_tokens,
            usage.audio_input_tokens + usage.audio_output_tokens
        ),
        (0, 0, 0, 0),
        "{f}: the float replica below only covers input and output"
    );
    let rate_f64 = |field: &str| -> f64 {
        slp.model_map_information.model_map_value[field]
            .get()
            .parse()
            .unwrap()
    };
    let litellm_f64 = usage.input_tokens as f64 * rate_f64("input_cost_per_token")
        + usage.output_tokens as f64 * rate_f64("output_cost_per_token");
    assert_eq!(
        litellm_f64.to_bits(),
        recorded_f64.to_bits(),
        "{f}: LiteLLM's float formula gives {litellm_f64:?}, recorded {recorded_f64:?}"
    );
    // rule 3: our exact total, as the nearest f64, is within one ULP of the recorded f64
    let ours_f64: f64 = cost.total.to_string().parse().unwrap();
    assert_eq!(
        ulps_apart(ours_f64, recorded_f64),
        p.ulps,
        "{f}: f64({}) = {ours_f64:?} vs recorded {recorded_f64:?}",
        cost.total
    );
    assert!(p.ulps <= 1);
    // ...and it is a different f64 from the recorded one, which is why rule 1 rounds
    assert_eq!(ours_f64 != recorded_f64, p.ulps != 0);
}

#[test]
fn gcs_pubsub_payload_reproduces_response_cost() {
    check(&payloads()[0]);
}

#[test]
fn azure_sentinel_payload_reproduces_response_cost() {
    check(&payloads()[1]);
}

#[test]
fn every_payload_fixture_is_checked() {
    let files: Vec<&str> = payloads().iter().map(|p| p.file).collect();
    assert_eq!(
        files,
        [
            "litellm_slp_gcs_pubsub_test.json",
            "litellm_slp_azure_sentinel_example.json"
        ]
    );
}

#[test]
fn payload_start_times_parse_in_both_formats() {
    let gcs: Slp = serde_json::from_str(payloads()[0].text).unwrap();
    let azure: Slp = serde_json::from_str(payloads()[1].text).unwrap();
    assert_eq!(
        start_time(gcs.startTime),
        Utc.with_ymd_and_hms(2025, 1, 24, 9, 20, 46).unwrap()
            + chrono::Duration::microseconds(847_371)
    );
    // 1766000068.28466 s = 2025-12-17 19:34:28.284660 UTC
    assert_eq!(
        start_time(azure.startTime),
        Utc.with_ymd_and_hms(2025, 12, 17, 19, 34, 28).unwrap()
            + chrono::Duration::microseconds(284_660)
    );
}

/// The catalog excerpt imported, then priced (moved here from the importer: pricing is enrich's).
fn excerpt() -> meterline_reference::litellm::Import {
    import(
        CATALOG,
        Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap(),
        "test",
        "litellm 1.109.1",
    )
    .unwrap()
}

fn entry<'a>(
    i: &'a meterline_reference::litellm::Import,
    id: &str,
) -> &'a meterline_schemas::PriceChange {
    i.changes.iter().find(|c| c.price_id == id).unwrap()
}

#[test]
fn tiered_pricing_and_context_tiers_price_like_the_catalog_says() {
    let i = excerpt();
    let q = entry(&i, "dashscope/qwen-flash");
    assert_eq!(q.model, "qwen-flash");
    let card = RateCard {
        price_id: &q.price_id,
        rates: &q.rates,
    };
    let small = price(
        &Usage {
            input_tokens: 1000,
            output_tokens: 100,
            ..Default::default()
        },
        ServiceTier::Standard,
        &card,
    )
    .unwrap();
    assert_eq!(small.total.to_string(), "0.00009"); // 1000*5e-8 + 100*4e-7
    let large = price(
        &Usage {
            input_tokens: 300_000,
            output_tokens: 100,
            ..Default::default()
        },
        ServiceTier::Standard,
        &card,
    )
    .unwrap();
    assert_eq!(large.total.to_string(), "0.0752"); // 300000*2.5e-7 + 100*2e-6
    let c = entry(&i, "anthropic.claude-sonnet-4-20250514-v1:0");
    let card = RateCard {
        price_id: &c.price_id,
        rates: &c.rates,
    };
    let big = price(
        &Usage {
            input_tokens: 150_000,
            cache_read_tokens: 60_000,
            output_tokens: 1000,
            ..Default::default()
        },
        ServiceTier::Standard,
        &card,
    )
    .unwrap();
    assert_eq!(
        (
            big.input.to_string(),
            big.cache_read.to_string(),
            big.output.to_string()
        ),
        ("0.9".into(), "0.036".into(), "0.0225".into())
    );
}

#[test]
fn per_second_units_and_litellm_reproduction() {
    let i = excerpt();
    let w = entry(&i, "whisper-1");
    let card = RateCard {
        price_id: &w.price_id,
        rates: &w.rates,
    };
    let c = price(
        &Usage {
            seconds: Some("7".parse().unwrap()),
            ..Default::default()
        },
        ServiceTier::Standard,
        &card,
    )
    .unwrap();
    assert_eq!(c.total.to_string(), "0.0007");
    let g = entry(&i, "gpt-4o");
    let card = RateCard {
        price_id: &g.price_id,
        rates: &g.rates,
    };
    let c = price(
        &Usage {
            input_tokens: 10,
            output_tokens: 20,
            ..Default::default()
        },
        ServiceTier::Standard,
        &card,
    )
    .unwrap();
    // LiteLLM recorded response_cost 0.00022500000000000002 (float) for this call
    assert_eq!(
        c.total,
        Money::rounded("0.00022500000000000002".parse().unwrap()).unwrap()
    );
}
