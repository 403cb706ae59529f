//! Queries that used to stop the server: an expression deep enough to overflow a thread's
//! stack (which aborts the process), and queries running past their time limit while the
//! server's own threads were busy with them (`/healthz` silent for minutes). Now the depth
//! is refused before planning, queries run on their own runtime, and at the limit the
//! answer goes out and the query is stopped.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;

fn chain(op: &str, n: usize) -> String {
    format!("SELECT {} AS x", vec!["1"; n].join(op))
}

#[tokio::test]
async fn deep_or_long_sql_is_refused_and_the_server_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    write_ledger(dir.path(), false);
    let base = serve(dir.path(), |_| {}).await;
    for op in ["+", " OR ", " || "] {
        let q = chain(op, 3000);
        let (status, body) = sql(&base, LEAD, &q).await;
        assert_eq!(status, 400, "3000 × {op}: {body}");
        assert!(body.contains("deeper than 256"), "names the limit: {body}");
    }
    // nested subqueries and parentheses: the parser's own limit
    let nested = format!("SELECT {}1{} AS x", "(".repeat(3000), ")".repeat(3000));
    let (status, body) = sql(&base, LEAD, &nested).await;
    assert_eq!(status, 400, "{body}");
    // within the limit: planned and run (on a thread with room for it)
    let (status, body) = sql(&base, LEAD, &chain("+", 250)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"x\":250"), "{body}");
    let long = format!("SELECT '{}' AS x", "y".repeat(20_000));
    let (status, body) = sql(&base, LEAD, &long).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("at most 16384"), "{body}");
    assert_eq!(sql(&base, LEAD, "SELECT 1 AS one").await.0, 200, "still up");
}

/// Polls `/healthz` until `stop`; the slowest answer.
async fn slowest_health(base: String, stop: tokio::sync::watch::Receiver<bool>) -> Duration {
    let client = reqwest::Client::new();
    let mut worst = Duration::ZERO;
    while !*stop.borrow() {
        let t = Instant::now();
        let r = client.get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        worst = worst.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    worst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_time_limit_holds_whatever_runs_and_health_answers_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    write_ledger(dir.path(), true);
    let server = start(dir.path(), |c| c.query_timeout_ms = 1000).await;
    let base = server.base.clone();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let health = tokio::spawn(slowest_health(base.clone(), stop));
    let runaway = [
        // a 4-way cross join: 10^20 rows
        "SELECT count(*) AS n FROM generate_series(1, 100000) a, generate_series(1, 100000) b, \
         generate_series(1, 100000) c, generate_series(1, 100000) d",
        "SELECT count(*) AS n FROM usage a, usage b, usage c, usage d, generate_series(1, 1000000000) e",
        "SELECT max(md5(CAST(v AS VARCHAR))) AS n FROM generate_series(1, 100000000000) t(v)",
        "SELECT v FROM generate_series(1, 100000000000) t(v) ORDER BY v DESC LIMIT 1",
    ];
    for q in runaway {
        // two at once, as many as the machine has cores
        let t = Instant::now();
        let (a, b) = tokio::join!(sql(&base, LEAD, q), sql(&base, FINANCE, q));
        let answered = t.elapsed();
        for (status, body) in [a, b] {
            assert_eq!(status, 422, "{q}: {body}");
            assert!(body.contains("time limit of 1000 ms"), "{q}: {body}");
        }
        assert!(
            answered < Duration::from_millis(2500),
            "{q}: answered after {answered:?}"
        );
        // and the queries stop: their tasks end soon after the answer
        let t = Instant::now();
        while server.running.load(Ordering::SeqCst) > 0 {
            assert!(t.elapsed() < Duration::from_secs(5), "{q}: still running");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        eprintln!(
            "{q}: answered 422 after {answered:?}, stopped {:?} later",
            t.elapsed()
        );
    }
    // levenshtein over 109,120 characters: a single uninterruptible call, refused up front
    // (as constants they are refused for their size already)
    for q in [
        "SELECT levenshtein(repeat(a, 109120), repeat(b, 109120)) AS d FROM (VALUES ('a', 'b')) t(a, b)",
        "SELECT levenshtein(repeat('a', 109120), repeat('b', 109120)) AS d",
    ] {
        let t = Instant::now();
        let (a, b) = tokio::join!(sql(&base, LEAD, q), sql(&base, LEAD, q));
        for (status, body) in [a, b] {
            assert_eq!(status, 422, "{body}");
            assert!(body.contains("levenshtein") || body.contains("constants"), "{body}");
        }
        assert!(t.elapsed() < Duration::from_secs(2), "{q}: {:?}", t.elapsed());
        eprintln!("{q}: refused after {:?}", t.elapsed());
    }
    let (status, body) = sql(&base, LEAD, "SELECT levenshtein('kitten', 'sitting') AS d").await;
    assert_eq!((status, body.contains("\"d\":3")), (200, true), "{body}");
    stop_tx.send(true).unwrap();
    let worst = health.await.unwrap();
    eprintln!("slowest /healthz while queries ran: {worst:?}");
    assert!(
        worst < Duration::from_millis(500),
        "/healthz took {worst:?}"
    );
}

/// A client that opens a connection and trickles half a request is disconnected after
/// `client_idle_timeout_ms`; a query that takes most of that time is not cut by it.
#[tokio::test]
async fn silent_clients_are_disconnected_and_slow_queries_are_not() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    write_ledger(dir.path(), false);
    let base = serve(dir.path(), |c| {
        c.query_timeout_ms = 1_000;
        c.client_idle_timeout_ms = 6_000;
    })
    .await;
    let addr = base.trim_start_matches("http://").to_string();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"POST /v1/sql HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let t0 = Instant::now();
    let mut buf = [0u8; 64];
    // the server closes (EOF or reset) — awaited, bounded well above the idle timeout
    let r = tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf)).await;
    let waited = t0.elapsed();
    assert!(r.is_ok(), "still open after 30 s");
    assert!(
        matches!(r.unwrap(), Ok(0) | Err(_)),
        "closed without an answer"
    );
    assert!(
        waited >= Duration::from_secs(5),
        "closed after {waited:?}, before the idle timeout"
    );
    // a query that runs to its time limit still gets its answer on a connection of its own
    let (status, body) = sql(
        &base,
        LEAD,
        "SELECT count(*) AS n FROM generate_series(1, 1000000000)",
    )
    .await;
    assert!(status == 200 || status == 422, "{status}: {body}");
    assert_eq!(
        sql(&base, LEAD, "SELECT 1 AS one").await.0,
        200,
        "still serving"
    );
}
