#!/usr/bin/env python3
"""Writes the seed corpora fuzz/corpus/<target>/ from the repository's real samples
(tests/fixtures, enrich/tests/fixtures, src/dev_*.{toml,yaml}, the examples of the module docs
and of the integration tests). One sample per file. Python 3 standard library only.

The seeds that need the project's own code (Avro records, OTLP protobuf) are written by the
fuzz binaries themselves: see fuzz/README.md ("Seeds").

Usage: python3 fuzz/make_seeds.py   (from anywhere; rewrites the seed files it owns)
"""

import json
import os
import re

FUZZ = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(FUZZ)
CORPUS = os.path.join(FUZZ, "corpus")


def fixture(*path):
    with open(os.path.join(ROOT, *path), encoding="utf-8") as f:
        return f.read()


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, (dict, list)):
        data = json.dumps(data, separators=(",", ":"))
    if isinstance(data, str):
        data = data.encode("utf-8")
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def sse_events(text):
    """The JSON events of an SSE stream (its `data:` lines)."""
    return [json.loads(l[len("data:"):]) for l in text.splitlines() if l.startswith("data:")]


# ---------------------------------------------------------------- samples
openai_response = json.loads(fixture("tests/fixtures/openai_chat_completion_example.json"))
anthropic_response = json.loads(fixture("tests/fixtures/anthropic_message_response.json"))
stream_events = sse_events(fixture("tests/fixtures/anthropic_message_stream.sse"))
stream_usages = [e for e in stream_events if e.get("type") in ("message_start", "message_delta")]
envoy = [json.loads(l) for l in fixture("tests/fixtures/envoy_openai_usages.jsonl").splitlines() if l.strip()]
litellm_gcs = json.loads(fixture("tests/fixtures/litellm_slp_gcs_pubsub_test.json"))
litellm_sentinel = json.loads(fixture("tests/fixtures/litellm_slp_azure_sentinel_example.json"))
openmeter = json.loads(fixture("tests/fixtures/openmeter_event_example.json"))
catalog = json.loads(fixture("reference/tests/fixtures/litellm_catalog_excerpt.json"))

# ---------------------------------------------------------------- adapter_native
base = {"occurred_at": "2026-01-01T00:00:00Z", "team_id": "t"}
write("adapter_native", "native-full.json", {
    "event_id": "n-1", "occurred_at": "2026-11-01T10:00:00Z", "provider": "OpenAI", "model": "gpt-4o",
    "operation": "chat", "api_key_id": "key-1", "team_id": "search", "org_id": "acme", "tags": {"env": "prod"},
    "usage": {"input_tokens": 1000, "cache_read_tokens": 200, "output_tokens": 300, "reasoning_tokens": 50},
    "service_tier": "batch", "latency_ms": 900, "gateway_reported_cost": "0.0123"})
write("adapter_native", "native-seconds-cost-float.json", {
    "event_id": "e1", "occurred_at": "2026-01-01T00:00:00Z", "provider": "openai", "model": "gpt-4o",
    "api_key_id": "k", "team_id": "t", "usage": {"input_tokens": 10, "output_tokens": 3, "seconds": "1.5"},
    "gateway_reported_cost": 0.029538000000000002, "tags": {"a": "b"}})
write("adapter_native", "native-openai-provider-usage.json", dict(
    base, event_id="n-openai", provider="openai", model=openai_response["model"], provider_usage=openai_response["usage"]))
write("adapter_native", "native-anthropic-provider-usage.json", dict(
    base, event_id="n-anthropic", provider="anthropic", model=anthropic_response["model"],
    provider_usage=anthropic_response["usage"]))
write("adapter_native", "native-anthropic-stream-events.json", dict(
    base, event_id="n-stream", provider="anthropic", model=anthropic_response["model"],
    provider_usage_stream=stream_events))
write("adapter_native", "native-anthropic-stream-usages.json", dict(
    base, event_id="n-stream-2", provider="anthropic", model=anthropic_response["model"],
    provider_usage_stream=[stream_usages[0]["message"]["usage"], stream_usages[1]["usage"]]))
write("adapter_native", "native-whisper-duration.json", dict(
    base, event_id="e3", provider="openai", model="whisper-1", provider_usage={"type": "duration", "seconds": 7}))
write("adapter_native", "native-transcribe-tokens.json", dict(
    base, event_id="e5", provider="openai", model="gpt-4o-transcribe",
    provider_usage={"type": "tokens", "input_tokens": 14, "input_token_details": {"audio_tokens": 10, "text_tokens": 4},
                    "output_tokens": 45}))
for i, c in enumerate(envoy):
    write("adapter_native", f"native-envoy-{i}.json", dict(
        base, event_id=f"envoy-{c['cassette']}", provider="openai", model=c["model"], provider_usage=c["usage"]))
write("adapter_native", "native-batch.json", [
    {"request_id": "req-nd-1", "occurred_at": "2026-11-01T10:00:04Z", "provider": "openai", "model": "gpt-4o-mini",
     "user_id": "u1", "usage": {"input_tokens": 5}},
    {"event_id": "nd-2", "occurred_at": "2026-11-01T10:00:05Z", "provider": "openai", "model": "gpt-4o-mini",
     "user_id": "u1", "usage": {"input_tokens": 6}}])

# ---------------------------------------------------------------- adapter_cloudevents
ce = dict(openmeter)
ce["data"] = {"gen_ai.provider.name": "anthropic", "gen_ai.request.model": "claude-sonnet-4-20250514",
              "gen_ai.usage.input_tokens": 100, "gen_ai.usage.cache_read.input_tokens": 20,
              "gen_ai.usage.output_tokens": 7, "team_id": "ce-team"}
write("adapter_cloudevents", "openmeter-genai.json", ce)
ce2 = dict(openmeter, id="batch-1", data={"gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o",
                                         "gen_ai.usage.prompt_tokens": 11, "gen_ai.usage.completion_tokens": 3})
write("adapter_cloudevents", "openmeter-batch.json", [ce2])
write("adapter_cloudevents", "openmeter-plain.json", openmeter)
write("adapter_cloudevents", "genai-cost.json", {
    "specversion": "1.0", "id": "1", "source": "gw", "type": "gen_ai.usage", "subject": "key-1",
    "time": "2026-01-01T00:00:00Z",
    "data": {"gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 10,
             "gen_ai.usage.output_tokens": 2, "meterline.gateway_reported_cost": "0.001"}})

# ---------------------------------------------------------------- adapter_litellm
write("adapter_litellm", "slp-gcs-pubsub.json", litellm_gcs)
write("adapter_litellm", "slp-azure-sentinel.json", litellm_sentinel)
attributed = json.loads(json.dumps(litellm_gcs))
attributed["id"] = "litellm-attr-1"
attributed["litellm_call_id"] = "call-1"
attributed["cache_hit"] = True
attributed.setdefault("metadata", {})["user_api_key_team_id"] = "team-litellm"
attributed["request_tags"] = ["env:prod", "feature=search", "beta", "team:a", "team:b"]
if isinstance(attributed.get("response"), dict):
    attributed["response"]["usage"] = {
        "prompt_tokens": 2000, "completion_tokens": 100, "total_tokens": 2100,
        "prompt_tokens_details": {"cached_tokens": 1500}, "completion_tokens_details": {"reasoning_tokens": 40}}
write("adapter_litellm", "slp-attributed.json", attributed)

# ---------------------------------------------------------------- adapter_usage
# first byte: provider (0 openai, 1 anthropic, 2 azure, 3 bedrock); then the JSON
def usage_seed(name, provider, v):
    write("adapter_usage", name, bytes([provider]) + json.dumps(v, separators=(",", ":")).encode())


usage_seed("openai-chat.json", 0, openai_response["usage"])
usage_seed("anthropic-message.json", 1, anthropic_response["usage"])
usage_seed("anthropic-stream-events.json", 1, stream_events)
usage_seed("anthropic-stream-usages.json", 1, [stream_usages[0]["message"]["usage"], stream_usages[1]["usage"]])
for i, c in enumerate(envoy):
    usage_seed(f"envoy-{i}.json", 2 if "azure" in c["url"] else 0, c["usage"])
for name, slp in (("litellm-gcs", litellm_gcs), ("litellm-sentinel", litellm_sentinel)):
    u = (slp.get("response") or {}).get("usage") if isinstance(slp.get("response"), dict) else None
    if u:
        usage_seed(f"{name}.json", 0, u)
usage_seed("openai-responses.json", 0, {
    "input_tokens": 328, "input_tokens_details": {"cached_tokens": 128}, "output_tokens": 52,
    "output_tokens_details": {"reasoning_tokens": 12}, "total_tokens": 380})
usage_seed("whisper-duration.json", 0, {"type": "duration", "seconds": 7})
usage_seed("transcribe-tokens.json", 0, {"type": "tokens", "input_tokens": 14,
                                         "input_token_details": {"audio_tokens": 10, "text_tokens": 4},
                                         "output_tokens": 45})

# ---------------------------------------------------------------- adapter_otlp_json
def kv(key, **value):
    return {"key": key, "value": value}


span = {"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331", "name": "chat", "kind": 3,
        "startTimeUnixNano": "1760000000000000000", "endTimeUnixNano": "1760000000500000000",
        "attributes": [kv("gen_ai.system", stringValue="openai"),
                       kv("gen_ai.request.model", stringValue="gpt-4o-mini"),
                       kv("gen_ai.usage.prompt_tokens", intValue="42"),
                       kv("gen_ai.usage.completion_tokens", intValue="8")],
        "status": {"code": 2}}
write("adapter_otlp_json", "ingest-formats.json", {"resourceSpans": [{
    "resource": {"attributes": [kv("meterline.team_id", stringValue="otel-team")]},
    "scopeSpans": [{"spans": [span]}]}]})
genai = {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "chat gpt-4o",
         "kind": 3, "startTimeUnixNano": "1760000000000000000", "endTimeUnixNano": "1760000001200000000",
         "attributes": [kv("gen_ai.operation.name", stringValue="chat"),
                        kv("gen_ai.provider.name", stringValue="openai"),
                        kv("gen_ai.request.model", stringValue="gpt-4o"),
                        kv("gen_ai.response.model", stringValue="gpt-4o-2024-08-06"),
                        kv("gen_ai.response.id", stringValue="chatcmpl-otlp-1"),
                        kv("gen_ai.openai.response.service_tier", stringValue="default"),
                        kv("gen_ai.usage.input_tokens", intValue="120"),
                        kv("gen_ai.usage.cache_read.input_tokens", intValue="20"),
                        kv("gen_ai.usage.output_tokens", intValue="30"),
                        kv("gen_ai.usage.reasoning.output_tokens", intValue="10"),
                        kv("meterline.team_id", stringValue="search"),
                        kv("meterline.tags", kvlistValue={"values": [kv("env", stringValue="prod")]}),
                        kv("http.response.status_code", intValue="200")],
         "status": {"code": 1}}
anthropic_span = {"traceId": "4bf92f3577b34da6a3ce929d0e0e4736", "spanId": "00f067aa0ba902b7",
                  "name": "chat claude", "kind": 3,
                  "startTimeUnixNano": "1760000000000000000", "endTimeUnixNano": "1760000000900000000",
                  "attributes": [kv("gen_ai.system", stringValue="anthropic"),
                                 kv("gen_ai.request.model", stringValue="claude-sonnet-4-20250514"),
                                 kv("gen_ai.usage.input_tokens", intValue="13"),
                                 kv("gen_ai.usage.cache_creation.input_tokens", intValue="5"),
                                 kv("gen_ai.usage.cache_read.input_tokens", intValue="7"),
                                 kv("gen_ai.usage.output_tokens", intValue="2"),
                                 kv("gen_ai.agent.id", stringValue="agent-1"),
                                 kv("gen_ai.conversation.id", stringValue="conv-1"),
                                 kv("meterline.user_id", stringValue="u-1"),
                                 kv("meterline.workflow_id", stringValue="wf"),
                                 kv("meterline.tags", arrayValue={"values": [{"stringValue": "a"}]}),
                                 kv("gen_ai.usage.cost", doubleValue=0.25),
                                 kv("raw", bytesValue="AAEC")]}
plain = {"traceId": "5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b", "spanId": "0909090909090909", "name": "GET /"}
write("adapter_otlp_json", "genai-semconv.json", {"resourceSpans": [{
    "resource": {"attributes": [kv("meterline.api_key_id", stringValue="key-otlp")]},
    "scopeSpans": [{"scope": {"name": "opentelemetry.instrumentation.openai"}, "spans": [plain, genai]}]}]})
write("adapter_otlp_json", "anthropic-two-resources.json", {"resourceSpans": [
    {"resource": {"attributes": [kv("meterline.org_id", stringValue="acme"),
                                 kv("meterline.project_id", stringValue="p")]},
     "scopeSpans": [{"spans": [anthropic_span]}]},
    {"scopeSpans": [{"spans": [plain, span]}, {"spans": []}]}]})

# ---------------------------------------------------------------- price_litellm
write("price_litellm", "catalog-excerpt.json", catalog)
for key, entry in catalog.items():
    safe = re.sub(r"[^A-Za-z0-9.-]+", "_", key)[:60]
    write("price_litellm", f"entry-{safe}.json", json.dumps({key: entry}, indent=1))

# ---------------------------------------------------------------- price_native_toml / _json
dev_prices = fixture("src/dev_prices.toml")
write("price_native_toml", "dev-prices.toml", dev_prices)
for i, block in enumerate(re.split(r"\n(?=\[\[price\]\])", dev_prices)):
    if block.lstrip().startswith("[[price]]"):
        write("price_native_toml", f"dev-prices-{i}.toml", block)
write("price_native_toml", "module-doc.toml", """[[price]]
provider = "self-hosted"
model = "llama-3.1-70b"
aliases = ["meta-llama/Llama-3.1-70B-Instruct"]
currency = "USD"
effective_from = "2026-01-01T00:00:00Z"

[[price.rate]]
unit = "input_token"
price = "0.20"
per = 1_000_000
tier = "batch"
above_input_tokens = 200000
""")
write("price_native_json", "native-test.json",
      '{"price":[{"provider":"acme","model":"m","effective_from":"2026-01-01T00:00:00Z",'
      '"rate":[{"unit":"request","price":"0.002"}]}]}')
write("price_native_json", "module-doc.json", {"prices": [{
    "id": "self-hosted/llama", "provider": "self-hosted", "model": "llama-3.1-70b",
    "aliases": ["meta-llama/Llama-3.1-70B-Instruct"], "currency": "USD",
    "effective_from": "2026-01-01T00:00:00Z", "effective_to": "2027-01-01T00:00:00Z",
    "rates": [{"unit": "input_token", "price": "0.20", "per": 1000000, "tier": "batch", "above_input_tokens": 200000},
              {"unit": "output_token", "price": 1, "per": 1000}]}]})

# ---------------------------------------------------------------- tenants
write("tenants_yaml", "dev-tenants.yaml", fixture("src/dev_tenants.yaml"))
write("tenants_yaml", "module-doc.yaml", """- rule_id: search-team-key
  priority: 10
  match: { api_key_id: "key-123" }
  tenant: { org: acme, business_unit: products, cost_center: CC-42, team: search }
  effective_from: 2026-01-01T00:00:00Z
- rule_id: tagged
  match: { tag: "env=dev", team_id: platform }
  tenant: { org: acme, team: platform, environment: dev }
  effective_to: 2027-01-01T00:00:00Z
""")
header = ("rule_id,priority,api_key_id,user_id,team_id,org_id,end_user,tag,org,business_unit,cost_center,"
          "team,project,environment,effective_from\n")
write("tenants_csv", "tenants-test.csv", header +
      "k1,5,key-1,,,,,,acme,products,CC-42,search,,prod,2026-01-01T00:00:00Z\n"
      "t1,,,,,,,env=dev,acme,,,platform,,dev,\n")
write("tenants_csv", "every-key.csv", header +
      "all,1,key-9,user-9,team-9,org-9,alice,feature=x,acme,bu,cc,team,proj,prod,2026-02-01T00:00:00+01:00\n")

# ---------------------------------------------------------------- sql_team_lead
# byte 0: answer format (0 CSV, 1 Arrow, else JSON); byte 1 '!': the rest is the SQL itself.
escapes = [
    "SELECT * FROM usage",
    "SELECT team, sum(cost_total) AS c FROM usage GROUP BY team",
    "SELECT * FROM usage WHERE team = 'secret-team'",
    "SELECT * FROM usage WHERE team <> 'search' OR team IS NULL",
    "SELECT * FROM daily_spend",
    "WITH t AS (SELECT * FROM usage) SELECT * FROM t",
    "SELECT model FROM usage UNION SELECT model FROM usage",
    "SELECT a.model, b.model FROM usage a JOIN usage b ON a.event_id <> b.event_id",
    "SELECT a.model FROM usage a FULL OUTER JOIN usage b ON a.team = b.team",
    "SELECT (SELECT max(cost_total) FROM usage) AS m",
    "SELECT string_agg(model, ',') FROM usage",
    "SELECT * FROM usage ORDER BY cost_total DESC LIMIT 1",
    "SELECT * FROM datafusion.public.usage",
    "EXPLAIN SELECT * FROM usage WHERE model = 'x'",
    "DESCRIBE usage",
    "SELECT * FROM monthly_spend",
    "SELECT * FROM anomalies",
    "SELECT * FROM budgets",
    "SELECT a.scope_value, u.model FROM anomalies a JOIN usage u ON a.model = u.model",
    "SELECT * FROM information_schema.tables",
    "SELECT * FROM usage WHERE CAST(api_key_id AS BIGINT) = 1",
    "SELECT * FROM usage WHERE to_timestamp(end_user) > now()",
    "SELECT * FROM usage WHERE regexp_like('x', end_user)",
    "SELECT count(*) FROM usage WHERE input_tokens / (input_tokens - 31337) > 0",
    "SELECT DISTINCT date FROM usage",
    "SELECT * FROM usage u WHERE EXISTS (SELECT 1 FROM usage v WHERE CAST(v.team AS INT) = 1)",
]
for i, q in enumerate(escapes):
    write("sql_team_lead", f"escape-{i:02}.sql", bytes([i % 3 + 2 if i % 5 else i % 2, ord("!")]) + q.encode())

# ---------------------------------------------------------------- avro_decode
# the contract test's records (the rest: METERLINE_FUZZ_WRITE_SEEDS, see fuzz/README.md)
fixtures = os.path.join(ROOT, "schemas", "tests", "fixtures")
for name in sorted(os.listdir(fixtures)):
    if name.endswith(".bin"):
        with open(os.path.join(fixtures, name), "rb") as f:
            write("avro_decode", name, f.read())
