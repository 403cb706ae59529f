//! Seeds that need the project's own code, written by the fuzz binaries themselves:
//! `METERLINE_FUZZ_WRITE_SEEDS=<dir> <target binary>` writes them into `<dir>` and exits
//! (see fuzz/README.md). Everything is derived from the committed samples (the other targets'
//! seed corpora, src/dev_prices.toml, src/dev_tenants.yaml, the LiteLLM catalog excerpt).

use std::path::{Path, PathBuf};

use meterline_reference::native::Syntax;
use meterline_reference::price_book::PriceBook;
use meterline_enrich::pricing::enrich;
use meterline_reference::tenants::TenantDirectory;
use meterline_ingest::adapters::{cloudevents, litellm, native, split_items};
use meterline_schemas::{AvroRecord, UsageEvent};
use prost::Message;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn files(dir: &Path) -> Vec<Vec<u8>> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    names.sort();
    names.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

/// If `METERLINE_FUZZ_WRITE_SEEDS` is set: writes `target`'s generated seeds there, exits.
pub fn write_if_asked(target: &str) {
    let Some(dir) = std::env::var_os("METERLINE_FUZZ_WRITE_SEEDS") else {
        return;
    };
    let dir = PathBuf::from(dir);
    std::fs::create_dir_all(&dir).expect("seed dir");
    let seeds = match target {
        "avro_decode" => avro(),
        "adapter_otlp_protobuf" => otlp_protobuf(),
        other => panic!("{other} has no generated seeds"),
    };
    for (name, bytes) in &seeds {
        std::fs::write(dir.join(name), bytes).expect("write seed");
    }
    eprintln!("wrote {} seeds to {}", seeds.len(), dir.display());
    std::process::exit(0);
}

fn otlp_protobuf() -> Vec<(String, Vec<u8>)> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    files(&repo().join("fuzz/corpus/adapter_otlp_json"))
        .iter()
        .enumerate()
        .filter_map(|(i, json)| {
            let req: ExportTraceServiceRequest = serde_json::from_slice(json).ok()?;
            Some((format!("otlp-{i}.pb"), req.encode_to_vec()))
        })
        .collect()
}

type Decode = fn(
    &serde_json::value::RawValue,
    &meterline_ingest::adapters::Ctx,
) -> Result<UsageEvent, meterline_ingest::adapters::FieldError>;

fn avro() -> Vec<(String, Vec<u8>)> {
    let mut out = vec![];
    let text = |p: &str| std::fs::read_to_string(repo().join(p)).expect("sample");
    // events from the adapters' seeds (real payloads)
    let mut events = vec![UsageEvent::example()];
    for (dir, decode) in [
        ("adapter_native", native::decode as Decode),
        ("adapter_litellm", litellm::decode),
        ("adapter_cloudevents", cloudevents::decode),
    ] {
        for body in files(&repo().join("fuzz/corpus").join(dir)) {
            for raw in split_items(&body, false).unwrap_or_default().into_iter().flatten() {
                if let Ok(e) = decode(raw, &crate::ctx()) {
                    events.push(e);
                }
            }
        }
    }
    // prices: the dev price book plus the LiteLLM excerpt
    let mut changes = meterline_reference::native::parse(
        &text("src/dev_prices.toml"),
        Syntax::Toml,
        None,
        "seed",
        "src/dev_prices.toml",
    )
    .expect("dev prices");
    changes.extend(
        meterline_reference::litellm::import(
            &text("reference/tests/fixtures/litellm_catalog_excerpt.json"),
            "2024-01-01T00:00:00Z".parse().expect("time"),
            "seed",
            "litellm",
        )
        .expect("catalog")
        .changes,
    );
    let mut book = PriceBook::new();
    for c in &changes {
        book.apply(c.clone());
    }
    let mut tenants = TenantDirectory::new();
    for r in meterline_reference::tenants::parse_yaml(
        &text("src/dev_tenants.yaml"),
        Some("2024-01-01T00:00:00Z".parse().expect("time")),
        "seed",
    )
    .expect("dev tenants")
    {
        tenants.apply(r);
    }
    for (i, e) in events.iter().enumerate() {
        if let Ok(b) = e.to_avro() {
            out.push((format!("usage-event-{i}.avro"), b));
        }
        let mut e = e.clone();
        e.team_id = Some("search".into());
        if let Ok(p) = enrich(e, &book, &tenants, crate::now()) {
            if let Ok(b) = p.to_avro() {
                out.push((format!("priced-usage-{i}.avro"), b));
            }
        }
    }
    for (i, c) in changes.iter().enumerate().step_by(3) {
        let mut c = c.clone();
        c.changed_at = crate::micros(c.changed_at);
        if let Ok(b) = c.to_avro() {
            out.push((format!("price-change-{i}.avro"), b));
        }
    }
    out
}
