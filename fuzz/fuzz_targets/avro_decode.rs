//! The Avro decoder on arbitrary bytes: `UsageEvent::from_avro`, `PricedUsage::from_avro`,
//! `PriceChange::from_avro` (single-object encoding, every accepted writer schema).
//! Properties: no panic, no unbounded allocation (run with -rss_limit_mb / -malloc_limit_mb);
//! a record that decodes re-encodes, and decodes again to the same value (what a stage reads
//! it can write on).
#![no_main]

use std::fmt::Debug;

use libfuzzer_sys::fuzz_target;
use meterline_schemas::{AvroRecord, PriceChange, PricedUsage, UsageEvent};

fn again<T: AvroRecord + PartialEq + Debug>(v: T) {
    let bytes = v
        .to_avro()
        .unwrap_or_else(|e| panic!("{}: decoded but does not re-encode ({e}): {v:?}", T::NAME));
    let back = T::from_avro(&bytes)
        .unwrap_or_else(|e| panic!("{}: re-encoded but does not decode ({e}): {v:?}", T::NAME));
    assert_eq!(back, v, "{}: not equal after decode → encode → decode", T::NAME);
}

fuzz_target!(
    init: meterline_fuzz::seeds::write_if_asked("avro_decode"),
    |data: &[u8]| {
    if let Ok(v) = UsageEvent::from_avro(data) {
        again(v);
    }
    if let Ok(v) = PricedUsage::from_avro(data) {
        again(v);
    }
    if let Ok(v) = PriceChange::from_avro(data) {
        again(v);
    }
}
);
