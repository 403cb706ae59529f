//! `adapters::native::decode` on a JSON body split as the edge splits it (one object or an array).
//! Property: no panic; an accepted event has a billable quantity, passes the edge's checks,
//! round-trips through Avro and prices; a refusal has a reason.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meterline_fuzz::{check_decoded, ctx};
use meterline_ingest::adapters::{split_items, native};

fuzz_target!(|data: &[u8]| {
    let Ok(items) = split_items(data, false) else {
        return;
    };
    let c = ctx();
    for item in items {
        match item {
            Ok(raw) => check_decoded("native", &raw.get(), &native::decode(raw, &c)),
            Err(f) => assert!(!f.reason.is_empty(), "split refusal without a reason"),
        }
    }
});
