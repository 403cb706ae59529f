//! OTLP/HTTP protobuf: `prost` decode of `ExportTraceServiceRequest` (as the edge does), then
//! `adapters::otlp::decode`. Property: no panic; each GenAI span's event has the edge's promise
//! (billable, Avro round-trip, prices) or a reason.
#![no_main]

use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

fuzz_target!(
    init: meterline_fuzz::seeds::write_if_asked("adapter_otlp_protobuf"),
    |data: &[u8]| {
    if let Ok(req) = ExportTraceServiceRequest::decode(data) {
        meterline_fuzz::check_otlp("otlp_protobuf", &req);
    }
}
);
