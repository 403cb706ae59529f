//! `meterline_reference::litellm::import` on catalog text. Properties: no panic; every imported
//! price change has rates, no duplicate (unit, tier, above), no negative price, survives the
//! Avro wire, and prices a maximal call without panicking or going negative; a refusal says why.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meterline_fuzz::{check_price_change, now, price_with, text};

fuzz_target!(|data: &[u8]| {
    let Some(catalog) = text(data) else { return };
    match meterline_reference::litellm::import(catalog, now(), "fuzz", "fuzz") {
        Ok(import) => {
            for c in &import.changes {
                check_price_change("litellm import", c);
                price_with("litellm import", c);
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
