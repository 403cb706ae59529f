//! A table of hand-computed cases for the cost rules of `meterline_enrich::cost::price`.
//!
//! Every expected line was worked out by hand from the rates and quantities of its row (the
//! arithmetic is in the comment above each `expect`); none was obtained by running the code or
//! through floating point. Each row names its case so a failure says which rule broke, and all
//! failing rows are reported together.
//!
//! Line order of `ok(…)`: input, cache_read, cache_write, output, reasoning, other, total.
//! Where the lines go (see `usage_event.avsc` / `priced_usage.avsc`): audio output is part of
//! `output`; audio input, images, seconds, characters and requests are `other`.
//!
//! Rules covered (module doc of `cost.rs`): disjoint buckets billed once; the event's tier with
//! per-unit fallback to standard; context tiers (`above_input_tokens` strictly below the
//! request's total input = input + cache read + cache writes + audio input, the largest
//! applicable one wins); cache read/write → input rate; 1h → 5m → input; reasoning → output;
//! audio → text; non-token units; zero quantities need no rate; a missing rate is `NoRate`
//! (never $0); decimal-exact arithmetic (10^12 tokens, 18-decimal rates, exponent text);
//! fractional seconds rounded half-even to 18 decimals; lines sum exactly to the total.

use meterline_enrich::cost::{price, RateCard};
use meterline_enrich::Error;
use meterline_schemas::unit::*;
use meterline_schemas::{CostLines, Money, Rate, ServiceTier, Usage};

const STD: &str = "standard";
const BATCH: &str = "batch";
const PRIO: &str = "priority";
const FLEX: &str = "flex";

/// (unit, tier, above_input_tokens, price as decimal text)
type R = (&'static str, &'static str, i64, &'static str);

enum Expect {
    /// input, cache_read, cache_write, output, reasoning, other, total
    Lines([&'static str; 7]),
    /// `Error::NoRate` for this unit, reported with this tier (price_id = the case name).
    NoRate(&'static str, &'static str),
    /// `Error::Overflow { what }`.
    Overflow(&'static str),
    /// `Error::ZeroCost { what, .. }`: a positive quantity at a positive rate rounding to $0.
    ZeroCost(&'static str),
}

struct Case {
    name: &'static str,
    rates: Vec<R>,
    usage: Usage,
    tier: ServiceTier,
    expect: Expect,
}

#[allow(clippy::too_many_arguments)]
fn ok(
    input: &'static str,
    cache_read: &'static str,
    cache_write: &'static str,
    output: &'static str,
    reasoning: &'static str,
    other: &'static str,
    total: &'static str,
) -> Expect {
    Expect::Lines([
        input,
        cache_read,
        cache_write,
        output,
        reasoning,
        other,
        total,
    ])
}

fn no_rate(unit: &'static str, tier: &'static str) -> Expect {
    Expect::NoRate(unit, tier)
}

/// Usage builder: `u().input(10).output(20)`.
fn u() -> Usage {
    Usage::default()
}

trait Build {
    fn input(self, n: i64) -> Self;
    fn cache_read(self, n: i64) -> Self;
    fn cw5m(self, n: i64) -> Self;
    fn cw1h(self, n: i64) -> Self;
    fn output(self, n: i64) -> Self;
    fn reasoning(self, n: i64) -> Self;
    fn audio_in(self, n: i64) -> Self;
    fn audio_out(self, n: i64) -> Self;
    fn images(self, n: i64) -> Self;
    fn seconds(self, s: &str) -> Self;
    fn characters(self, n: i64) -> Self;
    fn requests(self, n: i64) -> Self;
}

impl Build for Usage {
    fn input(mut self, n: i64) -> Self {
        self.input_tokens = n;
        self
    }
    fn cache_read(mut self, n: i64) -> Self {
        self.cache_read_tokens = n;
        self
    }
    fn cw5m(mut self, n: i64) -> Self {
        self.cache_write_5m_tokens = n;
        self
    }
    fn cw1h(mut self, n: i64) -> Self {
        self.cache_write_1h_tokens = n;
        self
    }
    fn output(mut self, n: i64) -> Self {
        self.output_tokens = n;
        self
    }
    fn reasoning(mut self, n: i64) -> Self {
        self.reasoning_tokens = n;
        self
    }
    fn audio_in(mut self, n: i64) -> Self {
        self.audio_input_tokens = n;
        self
    }
    fn audio_out(mut self, n: i64) -> Self {
        self.audio_output_tokens = n;
        self
    }
    fn images(mut self, n: i64) -> Self {
        self.images = n;
        self
    }
    fn seconds(mut self, s: &str) -> Self {
        self.seconds = Some(m(s));
        self
    }
    fn characters(mut self, n: i64) -> Self {
        self.characters = n;
        self
    }
    fn requests(mut self, n: i64) -> Self {
        self.requests = n;
        self
    }
}

fn m(s: &str) -> Money {
    s.parse()
        .unwrap_or_else(|e| panic!("'{s}' is not exact money: {e}"))
}

fn rates(rs: &[R]) -> Vec<Rate> {
    rs.iter()
        .map(|&(unit, tier, above, price)| Rate {
            unit: unit.into(),
            tier: tier.into(),
            above_input_tokens: above,
            price: m(price),
        })
        .collect()
}

/// gpt-4o-like card: input 2.5e-06, cached 1.25e-06, output 1e-05 (LiteLLM 1.109.1).
fn gpt4o() -> Vec<R> {
    vec![
        (INPUT, STD, 0, "0.0000025"),
        (CACHE_READ, STD, 0, "0.00000125"),
        (OUTPUT, STD, 0, "0.00001"),
    ]
}

/// Claude Sonnet-like card: input 3e-06, cache read 3e-07, 5m write 3.75e-06, 1h write 6e-06,
/// output 1.5e-05.
fn sonnet() -> Vec<R> {
    vec![
        (INPUT, STD, 0, "0.000003"),
        (CACHE_READ, STD, 0, "0.0000003"),
        (CACHE_WRITE_5M, STD, 0, "0.00000375"),
        (CACHE_WRITE_1H, STD, 0, "0.000006"),
        (OUTPUT, STD, 0, "0.000015"),
    ]
}

/// One context tier above 200k for input and output only.
fn ctx200k() -> Vec<R> {
    vec![
        (INPUT, STD, 0, "0.000003"),
        (INPUT, STD, 200_000, "0.000006"),
        (OUTPUT, STD, 0, "0.000015"),
        (OUTPUT, STD, 200_000, "0.0000225"),
    ]
}

/// Two context tiers (128k, 200k), listed out of order on purpose.
fn two_tiers() -> Vec<R> {
    vec![
        (INPUT, STD, 200_000, "0.000004"),
        (INPUT, STD, 0, "0.000001"),
        (INPUT, STD, 128_000, "0.000002"),
        (OUTPUT, STD, 128_000, "0.00002"),
        (OUTPUT, STD, 200_000, "0.00004"),
        (OUTPUT, STD, 0, "0.00001"),
    ]
}

/// Context tier above 200k for input, cache read, 5m write and output.
fn ctx200k_cached() -> Vec<R> {
    vec![
        (INPUT, STD, 0, "0.000003"),
        (INPUT, STD, 200_000, "0.000006"),
        (CACHE_READ, STD, 0, "0.0000003"),
        (CACHE_READ, STD, 200_000, "0.0000006"),
        (CACHE_WRITE_5M, STD, 0, "0.00000375"),
        (CACHE_WRITE_5M, STD, 200_000, "0.0000075"),
        (OUTPUT, STD, 0, "0.000015"),
        (OUTPUT, STD, 200_000, "0.0000225"),
    ]
}

fn cases() -> Vec<Case> {
    use ServiceTier::*;
    vec![
        // ── plain token pricing ──────────────────────────────────────────────────────────
        Case {
            name: "plain input and output",
            rates: vec![(INPUT, STD, 0, "0.0000025"), (OUTPUT, STD, 0, "0.00001")],
            usage: u().input(1200).output(300),
            tier: Standard,
            // input 1200 × 0.0000025 = 0.003; output 300 × 0.00001 = 0.003;
            // total 0.003 + 0.003 = 0.006
            expect: ok("0.003", "0", "0", "0.003", "0", "0", "0.006"),
        },
        Case {
            name: "exponent rate text (2.5e-06, 1.25e-06, 1E-5) parsed exactly",
            rates: vec![
                (INPUT, STD, 0, "2.5e-06"),
                (CACHE_READ, STD, 0, "1.25e-06"),
                (OUTPUT, STD, 0, "1E-5"),
            ],
            usage: u().input(10).cache_read(4).output(20),
            tier: Standard,
            // input 10 × 0.0000025 = 0.000025; cache_read 4 × 0.00000125 = 0.000005;
            // output 20 × 0.00001 = 0.0002; total 0.000025 + 0.000005 + 0.0002 = 0.00023
            expect: ok("0.000025", "0.000005", "0", "0.0002", "0", "0", "0.00023"),
        },
        // ── cache reads ──────────────────────────────────────────────────────────────────
        Case {
            name: "cached input billed once, at the cache-read rate",
            rates: gpt4o(),
            usage: u().input(800).cache_read(3200).output(100),
            tier: Standard,
            // input 800 × 0.0000025 = 0.002 (uncached only); cache_read 3200 × 0.00000125
            // = 0.004; output 100 × 0.00001 = 0.001; total 0.002 + 0.004 + 0.001 = 0.007
            expect: ok("0.002", "0.004", "0", "0.001", "0", "0", "0.007"),
        },
        Case {
            name: "cache read without a cache rate falls back to the input rate",
            rates: vec![(INPUT, STD, 0, "0.000003"), (OUTPUT, STD, 0, "0.000015")],
            usage: u().input(1000).cache_read(2000).output(10),
            tier: Standard,
            // input 1000 × 0.000003 = 0.003; cache_read 2000 × 0.000003 = 0.006;
            // output 10 × 0.000015 = 0.00015; total 0.003 + 0.006 + 0.00015 = 0.00915
            expect: ok("0.003", "0.006", "0", "0.00015", "0", "0", "0.00915"),
        },
        // ── cache writes ─────────────────────────────────────────────────────────────────
        Case {
            name: "cache write 5m at its own rate",
            rates: sonnet(),
            usage: u().input(100).cw5m(2000).output(50),
            tier: Standard,
            // input 100 × 0.000003 = 0.0003; cache_write 2000 × 0.00000375 = 0.0075;
            // output 50 × 0.000015 = 0.00075; total 0.0003 + 0.0075 + 0.00075 = 0.00855
            expect: ok("0.0003", "0", "0.0075", "0.00075", "0", "0", "0.00855"),
        },
        Case {
            name: "cache write 1h at its own rate",
            rates: sonnet(),
            usage: u().input(100).cw1h(2000).output(50),
            tier: Standard,
            // input 100 × 0.000003 = 0.0003; cache_write 2000 × 0.000006 = 0.012;
            // output 50 × 0.000015 = 0.00075; total 0.0003 + 0.012 + 0.00075 = 0.01305
            expect: ok("0.0003", "0", "0.012", "0.00075", "0", "0", "0.01305"),
        },
        Case {
            name: "cache read, 5m and 1h writes in one call (disjoint buckets)",
            rates: sonnet(),
            usage: u().input(13).cache_read(400).cw5m(60).cw1h(40).output(5),
            tier: Standard,
            // input 13 × 0.000003 = 0.000039; cache_read 400 × 0.0000003 = 0.00012;
            // cache_write 60 × 0.00000375 = 0.000225 + 40 × 0.000006 = 0.00024 → 0.000465;
            // output 5 × 0.000015 = 0.000075;
            // total 0.000039 + 0.00012 + 0.000465 + 0.000075 = 0.000699
            expect: ok(
                "0.000039", "0.00012", "0.000465", "0.000075", "0", "0", "0.000699",
            ),
        },
        Case {
            name: "1h write without a 1h rate falls back to the 5m rate",
            rates: vec![
                (INPUT, STD, 0, "0.000003"),
                (CACHE_WRITE_5M, STD, 0, "0.00000375"),
                (OUTPUT, STD, 0, "0.000015"),
            ],
            usage: u().input(10).cw1h(1000),
            tier: Standard,
            // input 10 × 0.000003 = 0.00003; cache_write 1000 × 0.00000375 = 0.00375;
            // total 0.00003 + 0.00375 = 0.00378
            expect: ok("0.00003", "0", "0.00375", "0", "0", "0", "0.00378"),
        },
        Case {
            name: "5m and 1h writes without write rates fall back to the input rate",
            rates: vec![(INPUT, STD, 0, "0.000003"), (OUTPUT, STD, 0, "0.000015")],
            usage: u().cw5m(100).cw1h(200).output(1),
            tier: Standard,
            // cache_write 100 × 0.000003 = 0.0003 + 200 × 0.000003 = 0.0006 → 0.0009;
            // output 1 × 0.000015 = 0.000015; total 0.0009 + 0.000015 = 0.000915
            expect: ok("0", "0", "0.0009", "0.000015", "0", "0", "0.000915"),
        },
        Case {
            name: "5m write never borrows the 1h rate (5m → input)",
            rates: vec![
                (INPUT, STD, 0, "0.000003"),
                (CACHE_WRITE_1H, STD, 0, "0.000006"),
            ],
            usage: u().cw5m(100).cw1h(100),
            tier: Standard,
            // 5m: 100 × 0.000003 (input) = 0.0003; 1h: 100 × 0.000006 = 0.0006;
            // cache_write 0.0003 + 0.0006 = 0.0009; total 0.0009
            expect: ok("0", "0", "0.0009", "0", "0", "0", "0.0009"),
        },
        // ── reasoning ────────────────────────────────────────────────────────────────────
        Case {
            name: "reasoning at its own rate",
            rates: vec![
                (INPUT, STD, 0, "0.000001"),
                (OUTPUT, STD, 0, "0.000004"),
                (REASONING, STD, 0, "0.000008"),
            ],
            usage: u().input(1000).output(500).reasoning(250),
            tier: Standard,
            // input 1000 × 0.000001 = 0.001; output 500 × 0.000004 = 0.002;
            // reasoning 250 × 0.000008 = 0.002; total 0.001 + 0.002 + 0.002 = 0.005
            expect: ok("0.001", "0", "0", "0.002", "0.002", "0", "0.005"),
        },
        Case {
            name: "reasoning without a reasoning rate falls back to the output rate",
            rates: vec![(INPUT, STD, 0, "0.00000125"), (OUTPUT, STD, 0, "0.00001")],
            usage: u().input(2000).output(300).reasoning(700),
            tier: Standard,
            // input 2000 × 0.00000125 = 0.0025; output 300 × 0.00001 = 0.003;
            // reasoning 700 × 0.00001 = 0.007; total 0.0025 + 0.003 + 0.007 = 0.0125
            expect: ok("0.0025", "0", "0", "0.003", "0.007", "0", "0.0125"),
        },
        // ── audio ────────────────────────────────────────────────────────────────────────
        Case {
            name: "audio input and output at their own rates",
            rates: vec![
                (INPUT, STD, 0, "0.0000025"),
                (OUTPUT, STD, 0, "0.00001"),
                (AUDIO_INPUT, STD, 0, "0.00004"),
                (AUDIO_OUTPUT, STD, 0, "0.00008"),
            ],
            usage: u().input(100).audio_in(50).output(20).audio_out(30),
            tier: Standard,
            // input 100 × 0.0000025 = 0.00025 + audio in 50 × 0.00004 = 0.002 → 0.00225;
            // output 20 × 0.00001 = 0.0002 + audio out 30 × 0.00008 = 0.0024 → 0.0026;
            // total 0.00225 + 0.0026 = 0.00485
            expect: ok("0.00225", "0", "0", "0.0026", "0", "0", "0.00485"),
        },
        Case {
            name: "audio without audio rates falls back to the text rates",
            rates: vec![(INPUT, STD, 0, "0.0000025"), (OUTPUT, STD, 0, "0.00001")],
            usage: u().audio_in(400).audio_out(100),
            tier: Standard,
            // input = audio in 400 × 0.0000025 = 0.001; output = audio out 100 × 0.00001
            // = 0.001; total 0.001 + 0.001 = 0.002
            expect: ok("0.001", "0", "0", "0.001", "0", "0", "0.002"),
        },
        // ── service tiers ────────────────────────────────────────────────────────────────
        Case {
            name: "batch tier uses its own rates",
            rates: vec![
                (INPUT, STD, 0, "0.0000025"),
                (OUTPUT, STD, 0, "0.00001"),
                (INPUT, BATCH, 0, "0.00000125"),
                (OUTPUT, BATCH, 0, "0.000005"),
            ],
            usage: u().input(1000).output(100),
            tier: Batch,
            // input 1000 × 0.00000125 = 0.00125; output 100 × 0.000005 = 0.0005;
            // total 0.00125 + 0.0005 = 0.00175
            expect: ok("0.00125", "0", "0", "0.0005", "0", "0", "0.00175"),
        },
        Case {
            name: "priority tier uses its own rates, cache read included",
            rates: vec![
                (INPUT, STD, 0, "0.0000025"),
                (CACHE_READ, STD, 0, "0.00000125"),
                (OUTPUT, STD, 0, "0.00001"),
                (INPUT, PRIO, 0, "0.00000425"),
                (CACHE_READ, PRIO, 0, "0.000002125"),
                (OUTPUT, PRIO, 0, "0.000017"),
            ],
            usage: u().input(1000).cache_read(1000).output(100),
            tier: Priority,
            // input 1000 × 0.00000425 = 0.00425; cache_read 1000 × 0.000002125 = 0.002125;
            // output 100 × 0.000017 = 0.0017; total 0.00425 + 0.002125 + 0.0017 = 0.008075
            expect: ok("0.00425", "0.002125", "0", "0.0017", "0", "0", "0.008075"),
        },
        Case {
            name: "flex tier uses its own rates",
            rates: vec![
                (INPUT, STD, 0, "0.00000125"),
                (CACHE_READ, STD, 0, "0.000000125"),
                (OUTPUT, STD, 0, "0.00001"),
                (INPUT, FLEX, 0, "0.000000625"),
                (CACHE_READ, FLEX, 0, "0.0000000625"),
                (OUTPUT, FLEX, 0, "0.000005"),
            ],
            usage: u().input(2000).cache_read(8000).output(400),
            tier: Flex,
            // input 2000 × 0.000000625 = 0.00125; cache_read 8000 × 0.0000000625 = 0.0005;
            // output 400 × 0.000005 = 0.002; total 0.00125 + 0.0005 + 0.002 = 0.00375
            expect: ok("0.00125", "0.0005", "0", "0.002", "0", "0", "0.00375"),
        },
        Case {
            name: "batch tier without a batch cache rate: standard cache rate, not batch input",
            rates: vec![
                (INPUT, STD, 0, "0.0000025"),
                (CACHE_READ, STD, 0, "0.000001"),
                (OUTPUT, STD, 0, "0.00001"),
                (INPUT, BATCH, 0, "0.00000125"),
                (OUTPUT, BATCH, 0, "0.000005"),
            ],
            usage: u().input(1000).cache_read(100).output(100),
            tier: Batch,
            // input 1000 × 0.00000125 = 0.00125; cache_read 100 × 0.000001 (standard cache
            // rate; the unit's tier fallback comes before the input-rate fallback) = 0.0001;
            // output 100 × 0.000005 = 0.0005; total 0.00125 + 0.0001 + 0.0005 = 0.00185
            expect: ok("0.00125", "0.0001", "0", "0.0005", "0", "0", "0.00185"),
        },
        Case {
            name: "priority tier lacking an output rate falls back to standard output",
            rates: vec![
                (INPUT, STD, 0, "0.000002"),
                (OUTPUT, STD, 0, "0.000008"),
                (INPUT, PRIO, 0, "0.0000035"),
            ],
            usage: u().input(1000).output(1000),
            tier: Priority,
            // input 1000 × 0.0000035 = 0.0035; output 1000 × 0.000008 = 0.008;
            // total 0.0035 + 0.008 = 0.0115
            expect: ok("0.0035", "0", "0", "0.008", "0", "0", "0.0115"),
        },
        Case {
            name: "flex tier with no flex rates at all is priced at standard",
            rates: vec![(INPUT, STD, 0, "0.000002"), (OUTPUT, STD, 0, "0.000008")],
            usage: u().input(500).output(250),
            tier: Flex,
            // input 500 × 0.000002 = 0.001; output 250 × 0.000008 = 0.002; total 0.003
            expect: ok("0.001", "0", "0", "0.002", "0", "0", "0.003"),
        },
        // ── context-length tiers ─────────────────────────────────────────────────────────
        Case {
            name: "context tier: exactly at 200,000 input tokens is the base rate",
            rates: ctx200k(),
            usage: u().input(200_000).output(10),
            tier: Standard,
            // 200,000 is not > 200,000: input 200000 × 0.000003 = 0.6;
            // output 10 × 0.000015 = 0.00015; total 0.6 + 0.00015 = 0.60015
            expect: ok("0.6", "0", "0", "0.00015", "0", "0", "0.60015"),
        },
        Case {
            name: "context tier: 200,001 input tokens is the tier rate (input and output)",
            rates: ctx200k(),
            usage: u().input(200_001).output(10),
            tier: Standard,
            // input 200001 × 0.000006 = 1.200006; output 10 × 0.0000225 = 0.000225;
            // total 1.200006 + 0.000225 = 1.200231
            expect: ok("1.200006", "0", "0", "0.000225", "0", "0", "1.200231"),
        },
        Case {
            name: "two context tiers: at the lower threshold (128,000) → base",
            rates: two_tiers(),
            usage: u().input(128_000).output(100),
            tier: Standard,
            // input 128000 × 0.000001 = 0.128; output 100 × 0.00001 = 0.001;
            // total 0.128 + 0.001 = 0.129
            expect: ok("0.128", "0", "0", "0.001", "0", "0", "0.129"),
        },
        Case {
            name: "two context tiers: above 128k only → the 128k tier",
            rates: two_tiers(),
            usage: u().input(150_000).output(100),
            tier: Standard,
            // input 150000 × 0.000002 = 0.3; output 100 × 0.00002 = 0.002;
            // total 0.3 + 0.002 = 0.302
            expect: ok("0.3", "0", "0", "0.002", "0", "0", "0.302"),
        },
        Case {
            name: "two context tiers: above both → the largest (200k) tier",
            rates: two_tiers(),
            usage: u().input(200_001).output(100),
            tier: Standard,
            // input 200001 × 0.000004 = 0.800004; output 100 × 0.00004 = 0.004;
            // total 0.800004 + 0.004 = 0.804004
            expect: ok("0.800004", "0", "0", "0.004", "0", "0", "0.804004"),
        },
        Case {
            name: "cache read + 5m write count toward total input: 200,001 → tier rates",
            rates: ctx200k_cached(),
            usage: u()
                .input(100_000)
                .cache_read(80_000)
                .cw5m(20_001)
                .output(1000),
            tier: Standard,
            // total input 100000 + 80000 + 20001 = 200001 > 200000 → tier rates:
            // input 100000 × 0.000006 = 0.6; cache_read 80000 × 0.0000006 = 0.048;
            // cache_write 20001 × 0.0000075 = 0.1500075; output 1000 × 0.0000225 = 0.0225;
            // total 0.6 + 0.048 + 0.1500075 + 0.0225 = 0.8205075
            expect: ok("0.6", "0.048", "0.1500075", "0.0225", "0", "0", "0.8205075"),
        },
        Case {
            name: "cache read + 5m write count toward total input: exactly 200,000 → base",
            rates: ctx200k_cached(),
            usage: u()
                .input(100_000)
                .cache_read(80_000)
                .cw5m(20_000)
                .output(1000),
            tier: Standard,
            // total input 100000 + 80000 + 20000 = 200000, not > 200000 → base rates:
            // input 100000 × 0.000003 = 0.3; cache_read 80000 × 0.0000003 = 0.024;
            // cache_write 20000 × 0.00000375 = 0.075; output 1000 × 0.000015 = 0.015;
            // total 0.3 + 0.024 + 0.075 + 0.015 = 0.414
            expect: ok("0.3", "0.024", "0.075", "0.015", "0", "0", "0.414"),
        },
        Case {
            name: "1h writes and audio input count toward total input; untiered unit keeps base",
            rates: vec![
                (INPUT, STD, 0, "0.000001"),
                (INPUT, STD, 1000, "0.000002"),
                (AUDIO_INPUT, STD, 0, "0.00001"),
                (AUDIO_INPUT, STD, 1000, "0.00002"),
                (CACHE_WRITE_1H, STD, 0, "0.000003"),
                (OUTPUT, STD, 0, "0.000005"),
            ],
            usage: u().input(500).audio_in(300).cw1h(201).output(10),
            tier: Standard,
            // total input 500 + 300 + 201 = 1001 > 1000:
            // input 500 × 0.000002 = 0.001 + audio in 300 × 0.00002 = 0.006 → 0.007;
            // cache_write 201 × 0.000003 = 0.000603 (no tier); output 10 × 0.000005 = 0.00005
            // (no tier); total 0.007 + 0.000603 + 0.00005 = 0.007653
            expect: ok("0.007", "0", "0.000603", "0.00005", "0", "0", "0.007653"),
        },
        Case {
            name: "cache read without its own rate in a context tier → the tier's input rate",
            rates: ctx200k(),
            usage: u().input(150_000).cache_read(50_001).output(1),
            tier: Standard,
            // total input 150000 + 50001 = 200001 > 200000:
            // input 150000 × 0.000006 = 0.9; cache_read 50001 × 0.000006 = 0.300006;
            // output 1 × 0.0000225 = 0.0000225; total 0.9 + 0.300006 + 0.0000225 = 1.2000285
            expect: ok("0.9", "0.300006", "0", "0.0000225", "0", "0", "1.2000285"),
        },
        Case {
            name: "priority tier with its own context tier; its base output beats standard's tier",
            rates: vec![
                (INPUT, STD, 0, "0.00000125"),
                (INPUT, STD, 200_000, "0.0000025"),
                (INPUT, PRIO, 0, "0.0000025"),
                (INPUT, PRIO, 200_000, "0.000005"),
                (OUTPUT, STD, 0, "0.00001"),
                (OUTPUT, STD, 200_000, "0.000015"),
                (OUTPUT, PRIO, 0, "0.00002"),
            ],
            usage: u().input(200_001).output(100),
            tier: Priority,
            // input 200001 × 0.000005 (priority, >200k) = 1.000005;
            // output: priority has its own (base) output rate → 100 × 0.00002 = 0.002;
            // total 1.000005 + 0.002 = 1.002005
            expect: ok("1.000005", "0", "0", "0.002", "0", "0", "1.002005"),
        },
        Case {
            name: "a rate that exists only above a threshold does not apply at the threshold",
            rates: vec![(INPUT, STD, 200_000, "0.000006")],
            usage: u().input(200_000),
            tier: Standard,
            // no rate with above_input_tokens < 200000 → NoRate(input_token)
            expect: no_rate(INPUT, STD),
        },
        Case {
            name: "a rate that exists only above a threshold applies above it",
            rates: vec![(INPUT, STD, 200_000, "0.000006")],
            usage: u().input(200_001),
            tier: Standard,
            // input 200001 × 0.000006 = 1.200006; total 1.200006
            expect: ok("1.200006", "0", "0", "0", "0", "0", "1.200006"),
        },
        // ── non-token units ──────────────────────────────────────────────────────────────
        Case {
            name: "images",
            rates: vec![(IMAGE, STD, 0, "0.04")],
            usage: u().images(3),
            tier: Standard,
            // other 3 × 0.04 = 0.12; total 0.12
            expect: ok("0", "0", "0", "0", "0", "0.12", "0.12"),
        },
        Case {
            name: "fractional seconds (7.5 s)",
            rates: vec![(SECOND, STD, 0, "0.0001")],
            usage: u().seconds("7.5"),
            tier: Standard,
            // other 7.5 × 0.0001 = 0.00075; total 0.00075
            expect: ok("0", "0", "0", "0", "0", "0.00075", "0.00075"),
        },
        Case {
            name: "characters",
            rates: vec![(CHARACTER, STD, 0, "0.000015")],
            usage: u().characters(1234),
            tier: Standard,
            // other 1234 × 0.000015 = 0.01851; total 0.01851
            expect: ok("0", "0", "0", "0", "0", "0.01851", "0.01851"),
        },
        Case {
            name: "requests",
            rates: vec![(REQUEST, STD, 0, "0.005")],
            usage: u().requests(3),
            tier: Standard,
            // other 3 × 0.005 = 0.015; total 0.015
            expect: ok("0", "0", "0", "0", "0", "0.015", "0.015"),
        },
        Case {
            name:
                "every 'other' unit in one call (images, seconds, characters, requests) + audio in",
            rates: vec![
                (INPUT, STD, 0, "0.000001"),
                (AUDIO_INPUT, STD, 0, "0.0001"),
                (IMAGE, STD, 0, "0.04"),
                (SECOND, STD, 0, "0.0001"),
                (CHARACTER, STD, 0, "0.00001"),
                (REQUEST, STD, 0, "0.002"),
            ],
            usage: u()
                .audio_in(10)
                .images(2)
                .seconds("7.5")
                .characters(100)
                .requests(1),
            tier: Standard,
            // input = audio in 10 × 0.0001 = 0.001;
            // other = 2 × 0.04 = 0.08 + 7.5 × 0.0001 = 0.00075 + 100 × 0.00001 = 0.001
            //       + 1 × 0.002 = 0.002 = 0.08375; total 0.001 + 0.08375 = 0.08475
            expect: ok("0.001", "0", "0", "0", "0", "0.08375", "0.08475"),
        },
        // ── zero quantities ──────────────────────────────────────────────────────────────
        Case {
            name: "zero quantities need no rate (seconds Some(0) included)",
            rates: vec![(INPUT, STD, 0, "0.000001")],
            usage: u().input(10).seconds("0"),
            tier: Standard,
            // input 10 × 0.000001 = 0.00001; every other bucket is 0 and has no rate
            expect: ok("0.00001", "0", "0", "0", "0", "0", "0.00001"),
        },
        Case {
            name: "empty usage on an empty card costs exactly 0",
            rates: vec![],
            usage: u(),
            tier: Batch,
            // nothing to price
            expect: ok("0", "0", "0", "0", "0", "0", "0"),
        },
        // ── exactness: huge counts, tiny rates, rounding of fractional seconds ───────────
        Case {
            name: "10^12 tokens in three buckets, exact",
            rates: gpt4o(),
            usage: u()
                .input(1_000_000_000_000)
                .cache_read(1_000_000_000_000)
                .output(1_000_000_000_000),
            tier: Standard,
            // input 10^12 × 0.0000025 = 2500000; cache_read 10^12 × 0.00000125 = 1250000;
            // output 10^12 × 0.00001 = 10000000; total 2500000 + 1250000 + 10000000 = 13750000
            expect: ok("2500000", "1250000", "0", "10000000", "0", "0", "13750000"),
        },
        Case {
            name: "9×10^18 tokens (near i64::MAX) at 1e-9, exact",
            rates: vec![(INPUT, STD, 0, "1e-9")],
            usage: u().input(9_000_000_000_000_000_000),
            tier: Standard,
            // input 9000000000000000000 × 0.000000001 = 9000000000; total 9000000000
            expect: ok("9000000000", "0", "0", "0", "0", "0", "9000000000"),
        },
        Case {
            name: "a product beyond Decimal's range is an Overflow error",
            rates: vec![(INPUT, STD, 0, "100000000000")],
            usage: u().input(9_000_000_000_000_000_000),
            tier: Standard,
            // 9×10^18 × 10^11 = 9×10^29 > Decimal::MAX ≈ 7.9×10^28 → Overflow(input_token)
            expect: Expect::Overflow(INPUT),
        },
        Case {
            name: "tiny 18-decimal rates, exact",
            rates: vec![
                (INPUT, STD, 0, "0.000000000000000001"),
                (OUTPUT, STD, 0, "0.000000000000000123"),
            ],
            usage: u().input(7).output(1000),
            tier: Standard,
            // input 7 × 0.000000000000000001 = 0.000000000000000007;
            // output 1000 × 0.000000000000000123 = 0.000000000000123;
            // total 0.000000000000123000 + 0.000000000000000007 = 0.000000000000123007
            expect: ok(
                "0.000000000000000007",
                "0",
                "0",
                "0.000000000000123",
                "0",
                "0",
                "0.000000000000123007",
            ),
        },
        Case {
            name: "seconds × 18-decimal rate: 2.5e-18 rounds half-even down to 2e-18",
            rates: vec![(SECOND, STD, 0, "0.000000000000000001")],
            usage: u().seconds("2.5"),
            tier: Standard,
            // 2.5 × 0.000000000000000001 = 0.0000000000000000025 (19 decimals);
            // half-even to 18 decimals: …0025 → …002 (2 is even)
            expect: ok(
                "0",
                "0",
                "0",
                "0",
                "0",
                "0.000000000000000002",
                "0.000000000000000002",
            ),
        },
        Case {
            name: "seconds × 18-decimal rate: 3.5e-18 rounds half-even up to 4e-18",
            rates: vec![(SECOND, STD, 0, "0.000000000000000001")],
            usage: u().seconds("3.5"),
            tier: Standard,
            // 3.5 × 0.000000000000000001 = 0.0000000000000000035; half-even → …004
            expect: ok(
                "0",
                "0",
                "0",
                "0",
                "0",
                "0.000000000000000004",
                "0.000000000000000004",
            ),
        },
        Case {
            name: "seconds × 18-decimal rate: 0.5e-18 rounds half-even to 0 → refused",
            rates: vec![(SECOND, STD, 0, "0.000000000000000001")],
            usage: u().seconds("0.5"),
            tier: Standard,
            // 0.5 × 0.000000000000000001 = 0.0000000000000000005; half-even → 0. A positive
            // quantity at a positive rate is never billed as free: the event is rejected
            expect: Expect::ZeroCost(SECOND),
        },
        Case {
            name: "every bucket at once on one card, standard tier",
            rates: vec![
                (INPUT, STD, 0, "0.000002"),
                (CACHE_READ, STD, 0, "0.0000002"),
                (CACHE_WRITE_5M, STD, 0, "0.0000025"),
                (CACHE_WRITE_1H, STD, 0, "0.000004"),
                (OUTPUT, STD, 0, "0.000008"),
                (REASONING, STD, 0, "0.000012"),
                (AUDIO_INPUT, STD, 0, "0.00003"),
                (AUDIO_OUTPUT, STD, 0, "0.00006"),
                (IMAGE, STD, 0, "0.01"),
                (SECOND, STD, 0, "0.0002"),
                (CHARACTER, STD, 0, "0.00002"),
                (REQUEST, STD, 0, "0.001"),
            ],
            usage: u()
                .input(1000)
                .cache_read(5000)
                .cw5m(300)
                .cw1h(200)
                .output(400)
                .reasoning(600)
                .audio_in(100)
                .audio_out(50)
                .images(1)
                .seconds("1.25")
                .characters(10)
                .requests(2),
            tier: Standard,
            // input 1000 × 0.000002 = 0.002 + audio in 100 × 0.00003 = 0.003 → 0.005;
            // cache_read 5000 × 0.0000002 = 0.001;
            // cache_write 300 × 0.0000025 = 0.00075 + 200 × 0.000004 = 0.0008 → 0.00155;
            // output 400 × 0.000008 = 0.0032 + 50 × 0.00006 = 0.003 → 0.0062;
            // reasoning 600 × 0.000012 = 0.0072;
            // other 1 × 0.01 = 0.01 + 1.25 × 0.0002 = 0.00025 + 10 × 0.00002 = 0.0002
            //       + 2 × 0.001 = 0.002 → 0.01245;
            // total 0.005 + 0.001 + 0.00155 + 0.0062 + 0.0072 + 0.01245 = 0.0334
            expect: ok(
                "0.005", "0.001", "0.00155", "0.0062", "0.0072", "0.01245", "0.0334",
            ),
        },
        // ── a missing rate is an error, never $0 ─────────────────────────────────────────
        Case {
            name: "missing output rate",
            rates: vec![(INPUT, STD, 0, "0.000001")],
            usage: u().input(10).output(5),
            tier: Standard,
            expect: no_rate(OUTPUT, STD),
        },
        Case {
            name: "missing image rate",
            rates: vec![(INPUT, STD, 0, "0.000001")],
            usage: u().images(1),
            tier: Standard,
            expect: no_rate(IMAGE, STD),
        },
        Case {
            name: "cache read on a card with neither a cache nor an input rate",
            rates: vec![(OUTPUT, STD, 0, "0.00001")],
            usage: u().cache_read(10).output(1),
            tier: Standard,
            expect: no_rate(CACHE_READ, STD),
        },
        Case {
            name: "1h write on a card with no write and no input rate",
            rates: vec![(OUTPUT, STD, 0, "0.00001")],
            usage: u().cw1h(5),
            tier: Standard,
            expect: no_rate(CACHE_WRITE_1H, STD),
        },
        Case {
            name: "reasoning on a card with neither a reasoning nor an output rate",
            rates: vec![(INPUT, STD, 0, "0.000001")],
            usage: u().input(1).reasoning(5),
            tier: Standard,
            expect: no_rate(REASONING, STD),
        },
        Case {
            name: "audio input on a card with neither an audio nor an input rate",
            rates: vec![(OUTPUT, STD, 0, "0.00001")],
            usage: u().audio_in(3),
            tier: Standard,
            expect: no_rate(AUDIO_INPUT, STD),
        },
        Case {
            name: "audio output on a card with neither an audio nor an output rate",
            rates: vec![(INPUT, STD, 0, "0.000001")],
            usage: u().audio_out(3),
            tier: Standard,
            expect: no_rate(AUDIO_OUTPUT, STD),
        },
        Case {
            name: "missing second rate (fractional seconds)",
            rates: vec![(INPUT, STD, 0, "0.000001")],
            usage: u().seconds("0.5"),
            tier: Standard,
            expect: no_rate(SECOND, STD),
        },
        Case {
            name: "missing character rate",
            rates: vec![(INPUT, STD, 0, "0.000001")],
            usage: u().characters(1),
            tier: Standard,
            expect: no_rate(CHARACTER, STD),
        },
        Case {
            name: "missing request rate",
            rates: vec![(INPUT, STD, 0, "0.000001")],
            usage: u().requests(1),
            tier: Standard,
            expect: no_rate(REQUEST, STD),
        },
        Case {
            name: "missing rate in the batch tier is reported with the event's tier",
            rates: vec![(INPUT, STD, 0, "0.000001"), (INPUT, BATCH, 0, "0.0000005")],
            usage: u().input(10).output(1),
            tier: Batch,
            expect: no_rate(OUTPUT, BATCH),
        },
    ]
}

fn lines(c: &CostLines) -> [Money; 7] {
    [
        c.input,
        c.cache_read,
        c.cache_write,
        c.output,
        c.reasoning,
        c.other,
        c.total,
    ]
}

const LINE_NAMES: [&str; 7] = [
    "input",
    "cache_read",
    "cache_write",
    "output",
    "reasoning",
    "other",
    "total",
];

/// Checks one case; returns the problems found (empty = pass).
fn check(case: &Case) -> Vec<String> {
    let mut bad = Vec::new();
    let rates = rates(&case.rates);
    let card = RateCard {
        price_id: case.name,
        rates: &rates,
    };
    let got = price(&case.usage, case.tier, &card);
    match (&case.expect, got) {
        (Expect::Lines(want), Ok(c)) => {
            let want: Vec<Money> = want.iter().map(|s| m(s)).collect();
            // the hand arithmetic itself must be consistent
            let want_sum = want[..6].iter().fold(Money::ZERO, |a, b| a + *b);
            if want_sum != want[6] {
                bad.push(format!(
                    "table error: expected lines sum to {want_sum}, row says total {}",
                    want[6]
                ));
            }
            for ((name, got), want) in LINE_NAMES.iter().zip(lines(&c)).zip(&want) {
                if got != *want {
                    bad.push(format!("{name}: got {got}, want {want}"));
                }
            }
            let sum = lines(&c)[..6].iter().fold(Money::ZERO, |a, b| a + *b);
            if sum != c.total {
                bad.push(format!("lines sum to {sum} but total is {}", c.total));
            }
        }
        (Expect::NoRate(unit, tier), Err(e)) => {
            let want = Error::NoRate {
                price_id: case.name.to_string(),
                unit,
                tier: tier.to_string(),
            };
            if format!("{e:?}") != format!("{want:?}") {
                bad.push(format!("got error {e:?}, want {want:?}"));
            }
        }
        (Expect::Overflow(what), Err(e)) => {
            let want = Error::Overflow { what };
            if format!("{e:?}") != format!("{want:?}") {
                bad.push(format!("got error {e:?}, want {want:?}"));
            }
        }
        (Expect::ZeroCost(what), Err(e)) => {
            if !matches!(&e, Error::ZeroCost { what: w, .. } if w == what) {
                bad.push(format!("got error {e:?}, want ZeroCost for {what}"));
            }
        }
        (Expect::Lines(_), Err(e)) => bad.push(format!("got error {e:?}, want lines")),
        (_, Ok(c)) => bad.push(format!("got lines {c:?}, want an error")),
    }
    bad
}

#[test]
fn hand_computed_cost_table() {
    let cases = cases();
    assert!(cases.len() >= 30, "only {} cases", cases.len());
    let mut names = std::collections::BTreeSet::new();
    for c in &cases {
        assert!(names.insert(c.name), "duplicate case name: {}", c.name);
    }
    let failures: Vec<String> = cases
        .iter()
        .flat_map(|c| {
            check(c)
                .into_iter()
                .map(move |p| format!("[{}] {p}", c.name))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures
            .iter()
            .map(|f| &f[..f.find(']').unwrap_or(0)])
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        cases.len(),
        failures.join("\n")
    );
}

// ── Edges found by the table (fixed): Money's range, overflowing token sums, double rounding.

/// A total above rust_decimal's 18-decimal reach (10^12 requests × 0.1 = 10^11, quantities
/// ingest accepts) must survive its Decimal128(38, 18) encoding exactly (it once came back
/// 10× too small), or be refused.
#[test]
fn cost_above_money_range_is_an_error_not_a_silent_truncation() {
    let rates = rates(&[(REQUEST, STD, 0, "0.1")]);
    let card = RateCard {
        price_id: "p",
        rates: &rates,
    };
    match price(
        &u().requests(1_000_000_000_000),
        ServiceTier::Standard,
        &card,
    ) {
        Err(Error::Overflow { .. }) => {}
        Err(e) => panic!("unexpected error {e:?}"),
        Ok(c) => {
            // 10^12 × 0.1 = 100000000000
            assert_eq!(c.total, m("100000000000"));
            let round_trip = Money::from_unscaled(c.total.to_unscaled()).ok();
            assert_eq!(
                round_trip,
                Some(c.total),
                "Ok total {} does not survive its Decimal128(38,18) encoding",
                c.total
            );
        }
    }
}

/// Token buckets whose sum overflows i64 (only a corrupt record) are an overflow error, not a
/// panic (debug) or a wrapped negative total choosing the base context tier (release).
#[test]
fn huge_buckets_are_an_overflow_error_not_a_panic() {
    let rates = rates(&[(INPUT, STD, 0, "0.000000001")]);
    let card = RateCard {
        price_id: "p",
        rates: &rates,
    };
    let usage = u().input(i64::MAX).cache_read(1);
    let got = std::panic::catch_unwind(|| price(&usage, ServiceTier::Standard, &card));
    assert!(
        matches!(got, Ok(Err(Error::Overflow { .. }))),
        "want Err(Overflow), got {:?}",
        got.map(|r| r.map(|c| c.total))
    );
}

/// Seconds are metered at nanosecond precision (cost.rs): 0.50000000001 s → 0.500000000 s
/// (half-even at 9 decimals); 0.5 × 0.000000000000000001 = 0.0000000000000000005, exactly
/// half-way at 18 decimals → half-even → 0, which is refused (ZeroCost). One rounding of the cost,
/// exact before it (9 + 18 = 27 decimals fit rust_decimal).
#[test]
fn seconds_product_is_rounded_once() {
    let rates = rates(&[(SECOND, STD, 0, "0.000000000000000001")]);
    let card = RateCard {
        price_id: "p",
        rates: &rates,
    };
    // rounds to $0 at a positive rate: refused, never free
    let e = price(&u().seconds("0.50000000001"), ServiceTier::Standard, &card).unwrap_err();
    assert!(matches!(e, Error::ZeroCost { what: SECOND, .. }), "{e:?}");
    // 0.5000000015 s → 0.500000002 s (half-even at 9) × 1e-18 = 5.00000002e-19 → 1e-18
    let c = price(&u().seconds("0.5000000015"), ServiceTier::Standard, &card).unwrap();
    assert_eq!(c.other, m("0.000000000000000001"));
}
