//! Where enrich's CPU per event goes, one step at a time on one thread (no Kafka): Avro decode,
//! pricing + attribution, Avro encode, dedup. `cargo run --release -p meterline-enrich --example
//! per_event_cost` (from `enrich/`). `meterline bench enrich` measures the whole stage.
use meterline_enrich::*;
use meterline_reference::{native, price_book, tenants};
use meterline_schemas::{AvroRecord, PricedUsage, UsageEvent};
use std::time::Instant;
fn main() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../src/dev_prices.toml"
    ))
    .unwrap();
    let mut book = price_book::PriceBook::new();
    for mut p in native::parse(&text, native::Syntax::Toml, None, "a", "b").unwrap() {
        p.version = 1;
        book.apply(p);
    }
    let tenants = tenants::TenantDirectory::new();
    let mut e = UsageEvent::example();
    e.usage.cache_read_tokens = 300;
    let bytes = e.to_avro().unwrap();
    let n = 200_000;
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(UsageEvent::from_avro(&bytes).unwrap());
    }
    println!(
        "decode {:.2} µs",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    let t = Instant::now();
    let mut out = vec![];
    for _ in 0..n {
        out.push(pricing::enrich(e.clone(), &book, &tenants, chrono::Utc::now()).unwrap());
    }
    println!(
        "enrich(+clone) {:.2} µs",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    let t = Instant::now();
    for p in &out {
        std::hint::black_box(p.to_avro().unwrap());
    }
    println!(
        "encode priced {:.2} µs",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    let t = Instant::now();
    for p in &out {
        std::hint::black_box(PricedUsage::codec().encode_reference(p).unwrap());
    }
    println!(
        "encode priced, apache-avro only {:.2} µs",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    let t = Instant::now();
    let mut d = dedup::DedupWindow::new(chrono::Duration::hours(1));
    for i in 0..n {
        d.admit(&format!("id-{i}"), e.occurred_at);
    }
    println!("dedup {:.2} µs", t.elapsed().as_secs_f64() * 1e6 / n as f64);
}
