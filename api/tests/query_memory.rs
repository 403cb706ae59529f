//! The memory limit holds for what the process really uses (RSS), not only for what
//! DataFusion's operators account: functions that make big values from small arguments
//! (`repeat`, `lpad`, `range`, `string_agg`, …) are bounded too. Measured in-process: the
//! peak RSS (VmHWM, reset before each query through /proc/self/clear_refs) must not grow by
//! more than the limit plus a margin for the server's own buffers. One test in this binary,
//! so nothing else runs in the process meanwhile.

mod common;

use common::*;

const LIMIT: usize = 256 << 20;

fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"))
}

/// Peak RSS growth (MiB) while `q` runs, its status and body.
async fn peak_growth(base: &str, q: &str) -> (u64, u16, String) {
    // the peak so far is forgotten: VmHWM starts again from the current RSS
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let before = status_kib("VmRSS:");
    let (status, body) = sql(base, FINANCE, q).await;
    let peak = status_kib("VmHWM:");
    (peak.saturating_sub(before) / 1024, status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_functions_stay_within_the_memory_limit() {
    let dir = tempfile::tempdir().unwrap();
    write_ledger(dir.path(), true);
    let base = serve(dir.path(), |c| {
        c.query_memory_bytes = LIMIT;
        c.query_timeout_ms = 20_000;
    })
    .await;
    // warm up: allocator arenas and the first session
    let (status, body) = sql(&base, FINANCE, "SELECT count(*) AS n FROM usage").await;
    assert_eq!(status, 200, "{body}");
    let hostile = [
        "SELECT length(repeat('x', 1000000000)) AS n",
        "SELECT length(repeat('x', 1e9)) AS n",
        "SELECT length(lpad('x', 1000000000)) AS n",
        "SELECT length(rpad('x', 1000000000, 'yz')) AS n",
        "SELECT cardinality(range(1, 100000000)) AS n",
        "SELECT cardinality(generate_series(1, 100000000)) AS n",
        "SELECT length(replace(repeat('a', 100000), 'a', repeat('b', 100000))) AS n",
        "SELECT length(repeat(repeat('x', 30000), 30000)) AS n",
        "SELECT max(length(repeat('x', 100000))) AS n FROM generate_series(1, 100000)",
        "SELECT length(string_agg(repeat('x', 1000), ',')) AS n FROM generate_series(1, 2000000)",
        "SELECT length(string_agg(CAST(v AS VARCHAR), ',')) AS n FROM generate_series(1, 200000000) t(v)",
        "SELECT cardinality(array_agg(v)) AS n FROM generate_series(1, 200000000) t(v)",
        "WITH a AS (SELECT repeat('x', 1000000) s), b AS (SELECT s||s||s||s||s||s||s||s AS s FROM a), \
         c AS (SELECT s||s||s||s||s||s||s||s AS s FROM b), d AS (SELECT s||s||s||s||s||s||s||s AS s FROM c) \
         SELECT length(s) AS n FROM d",
        "SELECT length(concat(repeat('x', 10000000), repeat('x', 10000000), repeat('x', 10000000), \
         repeat('x', 10000000), repeat('x', 10000000), repeat('x', 10000000))) AS n",
        // batches without columns are free to a join's accounting
        "SELECT count(*) AS n FROM generate_series(1, 100000) a, generate_series(1, 100000) b, \
         generate_series(1, 100000) c, generate_series(1, 100000) d",
        "SELECT max(length(upper(r) || (upper(r) || (upper(r) || (upper(r) || (upper(r) || upper(r))))))) AS n \
         FROM (SELECT repeat('x', 2000) AS r FROM generate_series(1, 200000))",
    ];
    let mut worst = 0;
    for q in hostile {
        let (grew, status, body) = peak_growth(&base, q).await;
        eprintln!("{grew:>6} MiB  {status}  {q}");
        worst = worst.max(grew);
        assert!(
            grew <= (LIMIT >> 20) as u64 + 64,
            "{q}: RSS grew by {grew} MiB under a {} MiB limit ({status}: {body})",
            LIMIT >> 20
        );
        if status != 200 {
            assert!(
                status == 422 || status == 400,
                "{q}: refused clearly, got {status}: {body}"
            );
        }
    }
    eprintln!(
        "worst peak growth: {worst} MiB under a {} MiB limit",
        LIMIT >> 20
    );
    // a collecting aggregate over a window makes a list of all earlier rows for every row
    for q in [
        "SELECT max(cardinality(a)) AS n FROM (SELECT array_agg(v) OVER (ORDER BY v) AS a \
         FROM generate_series(1, 200000) t(v))",
        "SELECT max(length(s)) AS n FROM (SELECT string_agg(CAST(v AS VARCHAR), ',') \
         OVER (ORDER BY v) AS s FROM generate_series(1, 200000) t(v))",
    ] {
        let (grew, status, body) = peak_growth(&base, q).await;
        assert_eq!(status, 400, "{q}: {body}");
        assert!(
            body.contains("not available as a window function"),
            "{body}"
        );
        assert!(grew < 64, "{q}: {grew} MiB");
    }
    // constants are made outside the pool and repeated over every row of a batch: their
    // total is bounded, however many calls make them
    let many = vec!["repeat('x', 10000000)"; 600].join(", ");
    for q in [
        format!("SELECT length(concat({many})) AS n"),
        format!(
            "SELECT {}",
            (0..400)
                .map(|i| format!("length(repeat('x', 30000)) AS c{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ] {
        let (grew, status, body) = peak_growth(&base, &q).await;
        eprintln!("{grew:>6} MiB  {status}  {}…", &q[..60]);
        assert_eq!(status, 422, "{body}");
        assert!(grew <= (LIMIT >> 20) as u64 + 64, "{grew} MiB");
    }
    // ordinary uses are unaffected
    for (q, want) in [
        (
            "SELECT repeat('ab', 3) || lpad('7', 3, '0') AS s",
            "ababab007",
        ),
        ("SELECT cardinality(range(1, 1001)) AS n", "\"n\":1000"),
        (
            "SELECT string_agg(CAST(v AS VARCHAR), ',') AS s FROM generate_series(1, 3) t(v)",
            "1,2,3",
        ),
        (
            "SELECT replace(CAST(model AS VARCHAR), 'gpt', 'GPT') AS m FROM usage \
             WHERE team = 'search' ORDER BY 1 LIMIT 1",
            "GPT-4o",
        ),
    ] {
        let (status, body) = sql(&base, FINANCE, q).await;
        assert_eq!(status, 200, "{q}: {body}");
        assert!(body.contains(want), "{q}: {body}");
    }
    // and the server still answers
    assert_eq!(sql(&base, FINANCE, "SELECT 1 AS one").await.0, 200);
}
