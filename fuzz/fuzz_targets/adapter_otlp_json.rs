//! OTLP/HTTP JSON: the request as the edge reads it (serde_json into
//! `ExportTraceServiceRequest`), then `adapters::otlp::decode`. Property: no panic; each GenAI
//! span's event has the edge's promise (billable, Avro round-trip, prices) or a reason.
#![no_main]

use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = serde_json::from_slice::<ExportTraceServiceRequest>(data) {
        meterline_fuzz::check_otlp("otlp_json", &req);
    }
});
