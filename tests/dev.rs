//! README command one, as a newcomer runs it: `meterline dev --demo-anomaly` on an empty data
//! directory. Within two minutes the API behind the printed URL shows spend of several teams
//! and models, a crossing of the demo budget and the demo anomaly, a team lead sees only its
//! team; SIGTERM stops it cleanly, and a second start continues from the same data.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

const FINANCE: &str = "dev-finance-token";
const LEAD: &str = "dev-lead-search-token";

struct Dev {
    child: Child,
    api: String,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `meterline dev` and waits for the URL it prints to open.
fn start(data: &std::path::Path, kafka_port: u16) -> Dev {
    let mut child = Command::new(env!("CARGO_BIN_EXE_meterline"))
        .args(["dev", "--demo-anomaly", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data)
        .args(["--kafka-port", &kafka_port.to_string()])
        .env("METERLINE_API__LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("meterline dev starts");
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            println!("dev| {line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(180);
    let api = loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("meterline dev prints the URL to open within 3 minutes");
        if let Some(rest) = line.trim().strip_prefix("open") {
            let url = rest.trim().split_whitespace().next().unwrap();
            break url.split("/#").next().unwrap().to_string();
        }
    };
    Dev { child, api }
}

/// Sends `req` and reads the JSON answer (a 2xx), on a runtime of its own.
fn call(req: reqwest::RequestBuilder) -> Result<Value, reqwest::Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async { req.send().await?.error_for_status()?.json().await })
}

fn get(url: &str, token: &str) -> Value {
    call(reqwest::Client::new().get(url).bearer_auth(token))
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

fn sql(api: &str, token: &str, q: &str) -> Vec<Value> {
    let req = reqwest::Client::new()
        .post(format!("{api}/v1/sql"))
        .bearer_auth(token)
        .json(&serde_json::json!({ "sql": q }));
    let v = call(req).unwrap_or_else(|e| panic!("{q}: {e}"));
    v["rows"].as_array().unwrap().clone()
}

/// Polls `check` every half second until it holds, for at most `secs`.
fn within(secs: u64, what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match check() {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("{what} not within {secs} s: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

#[test]
fn one_command_to_a_dashboard_with_spend_a_budget_crossing_and_an_anomaly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev");
    let kafka_port = meterline::broker::free_port();
    let dev = start(&data, kafka_port);
    let started = Instant::now();
    let api = dev.api.clone();

    // the page itself
    let page = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let r = reqwest::get(format!("{api}/")).await?.error_for_status()?;
        r.text().await
    });
    assert!(page.unwrap().contains("meterline"));

    // spend by team and model: the loadgen's five teams, four models, all priced
    within(120, "spend of 4 teams and 3 models", || {
        let rows = sql(
            &api,
            FINANCE,
            "SELECT count(DISTINCT team) AS teams, count(DISTINCT model) AS models FROM usage \
             WHERE event_id NOT LIKE 'demo-anomaly-%'",
        );
        let (t, m) = (rows[0]["teams"].as_u64(), rows[0]["models"].as_u64());
        (t >= Some(4) && m >= Some(3))
            .then_some(())
            .ok_or(format!("{rows:?}"))
    });
    // the demo anomaly, found from the history the dev command put in the ledger
    within(60, "the demo anomaly", || {
        let v = get(&format!("{api}/v1/reports/anomalies"), FINANCE);
        let rows = v["rows"].as_array().unwrap();
        rows.iter()
            .any(|a| a["scope_value"] == "data-science" && a["kind"] == "spend_spike")
            .then_some(())
            .ok_or(format!("{v}"))
    });
    // a crossing of the demo budget (search, $10 a day, first threshold 25 %)
    within(150, "a crossing of the demo budget", || {
        let v = get(&format!("{api}/v1/reports/budgets"), FINANCE);
        let b = v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["budget_id"] == "demo-search-daily")
            .cloned()
            .ok_or(format!("no demo budget: {v}"))?;
        (b["state"] != "ok" && b["signal_threshold_percent"].as_u64() >= Some(25))
            .then_some(())
            .ok_or(format!("{b}"))
    });
    println!(
        "spend, anomaly and budget crossing after {:?}",
        started.elapsed()
    );

    // a team lead sees its team only
    let teams = sql(&api, LEAD, "SELECT DISTINCT team FROM usage");
    assert_eq!(teams, vec![serde_json::json!({"team": "search"})]);

    // SIGTERM: a clean stop
    let events_before = sql(&api, FINANCE, "SELECT count(*) AS n FROM usage")[0]["n"]
        .as_u64()
        .unwrap();
    let mut dev = dev;
    let pid = dev.child.id() as i32;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(s) = dev.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "meterline dev did not stop within 90 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.success(), "meterline dev exited with {status}");
    drop(dev);

    // started again on the same data: the ledger is still there and grows
    let again = start(&data, kafka_port);
    let api = again.api.clone();
    within(60, "the ledger continuing", || {
        let n = sql(&api, FINANCE, "SELECT count(*) AS n FROM usage")[0]["n"]
            .as_u64()
            .unwrap();
        (n > events_before)
            .then_some(())
            .ok_or(format!("{n} ≤ {events_before}"))
    });
    // the anomaly demo's events were sent again with the same ids: not billed twice
    let demo = sql(
        &api,
        FINANCE,
        "SELECT count(*) AS n, count(DISTINCT event_id) AS ids FROM usage WHERE event_id LIKE 'demo-anomaly-%'",
    );
    assert_eq!(demo[0]["n"], demo[0]["ids"], "{demo:?}");
}
