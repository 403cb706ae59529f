//! `meterline_reference::native::parse(text, Syntax::Json, …)` (meterline's own price file).
//! Properties: no panic; every parsed price change has rates, no duplicate (unit, tier, above),
//! no negative price, an effective range that survives the Avro wire (equal after it), and
//! prices a maximal call without panicking or going negative; a refusal says why.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meterline_reference::native::{parse, Syntax};
use meterline_fuzz::{check_price_change, now, price_with, text};

fuzz_target!(|data: &[u8]| {
    let Some(file) = text(data) else { return };
    match parse(file, Syntax::Json, Some(now()), "fuzz", "fuzz") {
        Ok(changes) => {
            for c in &changes {
                check_price_change("native json", c);
                price_with("native json", c);
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
