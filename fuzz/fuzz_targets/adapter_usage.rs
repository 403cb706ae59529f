//! Provider usage normalisation: `adapters::usage::normalize(provider, &Value, base)` for a JSON
//! object and `adapters::usage::anthropic_stream(&[Value], base)` for a JSON array (snapshots or
//! whole stream events). The first input byte picks the provider, the rest is the JSON.
//! Properties: no panic; a normalised usage has no negative bucket; OpenAI chat usage is
//! conserved (the disjoint input buckets add up to `prompt_tokens`, the output ones to
//! `completion_tokens`); an event carrying it is accepted with the full edge promise (billable,
//! Avro round-trip, prices) or refused by the edge with a reason; a refusal has a reason.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meterline_fuzz::{assert_counts_non_negative, check_decoded, now};
use meterline_ingest::adapters::usage::{self, UsageShape};
use meterline_ingest::adapters::{check_event, FieldError};
use meterline_schemas::{Usage, UsageEvent};
use serde_json::Value;

const PROVIDERS: [&str; 6] = ["openai", "anthropic", "azure", "bedrock", "Anthropic", ""];

fn conserved(provider: &str, v: &Value, u: &Usage) {
    if v.get("type").and_then(Value::as_str).is_some()
        || usage::detect(provider, v) != Some(UsageShape::OpenAiChat)
    {
        return;
    }
    let prompt = usage::count(v, "prompt_tokens").expect("accepted, so readable");
    let completion = usage::count(v, "completion_tokens").expect("accepted, so readable");
    let wide = |xs: &[i64]| xs.iter().map(|x| *x as i128).sum::<i128>();
    let input = wide(&[
        u.input_tokens,
        u.cache_read_tokens,
        u.cache_write_5m_tokens,
        u.cache_write_1h_tokens,
        u.audio_input_tokens,
    ]);
    assert_eq!(input, prompt as i128, "input buckets do not add up to prompt_tokens: {u:?} from {v}");
    let output = wide(&[u.output_tokens, u.reasoning_tokens, u.audio_output_tokens]);
    assert_eq!(output, completion as i128, "output buckets do not add up to completion_tokens: {u:?} from {v}");
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, json)) = data.split_first() else {
        return;
    };
    let provider = PROVIDERS[pick as usize % PROVIDERS.len()];
    let Ok(v) = serde_json::from_slice::<Value>(json) else {
        return;
    };
    let r: Result<Usage, FieldError> = match &v {
        Value::Array(items) => usage::anthropic_stream(items, "provider_usage_stream"),
        other => {
            let r = usage::normalize(provider, other, "provider_usage");
            if let Ok(u) = &r {
                conserved(provider, other, u);
            }
            r
        }
    };
    match r {
        Err(f) => assert!(!f.reason.is_empty(), "refusal without a reason: {f:?} for {v}"),
        Ok(u) => {
            assert_counts_non_negative("usage", &u);
            let mut e = UsageEvent::example();
            e.provider = if provider.is_empty() { "openai".into() } else { provider.into() };
            e.occurred_at = now();
            e.received_at = now();
            e.usage = u;
            let r = check_event(&e).map(|()| e);
            check_decoded("usage", &v, &r);
        }
    }
});
