//! Two `meterline watch` processes with the same `[watch]` on a real Apache Kafka, beside the
//! real enrich and aggregate stages and the edge: exactly one is active (`/healthz` says
//! `ok: active` / `ok: standby`, `meterline_watch_active` 1 / 0). Three budgets are crossed,
//! one per phase, and each crossing must end up exactly once on `meterline.budget.signals` and
//! exactly once at the webhook receiver:
//! 1. with the first active instance;
//! 2. after it is SIGKILLed: the standby takes over (the takeover time is measured and printed);
//! 3. after the new active one is SIGSTOPped (a stall past its session: it still believes it is
//!    active) and the restarted first instance takes over; then the stalled one is woken while
//!    the crossing is on the topic it reads. It must publish and deliver nothing (the broker
//!    fences it) and go back to standby.

mod common;

use std::process::Child;
use std::time::{Duration, Instant};

use common::{eventually, spawn_stage, Harness};
use meterline_schemas::{topics, AvroRecord, BudgetSignal};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::json;

const TENANTS: &str = r#"
- rule_id: key-1
  match: { api_key_id: key-1 }
  tenant: { org: acme, team: t1 }
- rule_id: key-2
  match: { api_key_id: key-2 }
  tenant: { org: acme, team: t2 }
- rule_id: key-3
  match: { api_key_id: key-3 }
  tenant: { org: acme, team: t3 }
"#;

type Calls = common::WebhookCalls;

/// Webhook calls for `budget`.
fn calls_for(calls: &Calls, budget: &str) -> usize {
    calls
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, v)| v["signal"]["budget_id"] == budget)
        .count()
}

/// The offsets of `budget`'s signals on the topic: committed ones only, what every reader
/// sees (each transaction's commit marker takes an offset too, so they are not 0, 1, 2).
async fn signals_for(h: &Harness, budget: &str) -> Vec<i64> {
    let brokers = h.kafka.brokers.clone();
    let budget = budget.to_string();
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", "meterline-test-reader")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .unwrap();
        let (_, high) = c
            .fetch_watermarks(topics::BUDGET_SIGNALS, 0, Duration::from_secs(10))
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topics::BUDGET_SIGNALS, 0, Offset::Beginning)
            .unwrap();
        c.assign(&tpl).unwrap();
        let mut out = vec![];
        let t0 = Instant::now();
        loop {
            let pos = c.position().unwrap();
            let at = pos
                .find_partition(topics::BUDGET_SIGNALS, 0)
                .map(|e| e.offset());
            if high == 0 || matches!(at, Some(Offset::Offset(o)) if o >= high) {
                return out;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "reading the signals"
            );
            if let Some(m) = c.poll(Duration::from_millis(100)) {
                let m = m.unwrap();
                let s = BudgetSignal::from_avro(m.payload().unwrap()).unwrap();
                if s.budget_id == budget {
                    out.push(m.offset());
                }
            }
        }
    })
    .await
    .unwrap()
}

/// The alert group's committed offset on the signals topic.
async fn alerts_committed(h: &Harness) -> i64 {
    let brokers = h.kafka.brokers.clone();
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", "meterline-alerts")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topics::BUDGET_SIGNALS, 0);
        let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
        match got.elements()[0].offset() {
            Offset::Offset(o) => o,
            _ => 0,
        }
    })
    .await
    .unwrap()
}

/// A watch instance: its process and its metrics port.
struct Watch {
    child: Child,
    port: u16,
}

impl Watch {
    fn spawn(h: &Harness, port: u16, data: &std::path::Path, log: &std::path::Path) -> Watch {
        let settings = [
            ("METERLINE_WATCH__LISTEN", format!("127.0.0.1:{port}")),
            ("METERLINE_WATCH__DATA_DIR", data.display().to_string()),
            ("METERLINE_WATCH__ALERTS__BACKOFF_INITIAL_MS", "100".into()),
        ];
        Watch {
            child: spawn_stage(h, "watch", &settings, log),
            port,
        }
    }

    /// What `/healthz` answers with 200 (`ok: active`, `ok: standby`), else `None`.
    async fn role(&self, client: &reqwest::Client) -> Option<String> {
        let r = client
            .get(format!("http://127.0.0.1:{}/healthz", self.port))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.text().await.ok()
    }

    async fn active(&self, client: &reqwest::Client) -> bool {
        self.role(client).await.as_deref() == Some("ok: active")
    }

    async fn standby(&self, client: &reqwest::Client) -> bool {
        self.role(client).await.as_deref() == Some("ok: standby")
    }

    async fn active_metric(&self, client: &reqwest::Client) -> f64 {
        let text = client
            .get(format!("http://127.0.0.1:{}/metrics", self.port))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("meterline_watch_active "))
            .and_then(|v| v.trim().parse().ok())
            .expect("meterline_watch_active exported")
    }

    fn signal(&self, sig: i32) {
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }
}

/// Stage processes, killed when dropped (also when an assertion fails).
#[derive(Default)]
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGCONT) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An event costing 0.02 USD (2,000 output tokens of gpt-4o at $10 per M): over a 0.01 budget.
fn over_budget(id: &str, key: &str) -> String {
    json!({"event_id": id, "occurred_at": chrono::Utc::now().to_rfc3339(), "provider": "openai",
           "model": "gpt-4o", "operation": "chat", "api_key_id": key,
           "usage": {"input_tokens": 0, "output_tokens": 2000}})
    .to_string()
}

/// Posts the crossing of `budget` (by `key`) and waits until it is on the topic and at the
/// receiver, and delivery has committed it.
async fn cross(h: &Harness, calls: &Calls, budget: &str, key: &str) {
    let (s, b) = h
        .post(
            "/v1/events",
            "application/json",
            over_budget(&format!("{budget}-e"), key),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    eventually(
        Duration::from_secs(60),
        &format!("{budget}: signal published"),
        || async { !signals_for(h, budget).await.is_empty() },
    )
    .await;
    let offset = signals_for(h, budget).await[0];
    eventually(
        Duration::from_secs(30),
        &format!("{budget}: webhook called"),
        || async { calls_for(calls, budget) >= 1 },
    )
    .await;
    eventually(
        Duration::from_secs(30),
        &format!("{budget}: delivery committed"),
        || async { alerts_committed(h).await > offset },
    )
    .await;
}

/// Waits until `w` is active; returns how long that took.
async fn takeover(client: &reqwest::Client, w: &Watch, what: &str) -> Duration {
    let t0 = Instant::now();
    eventually(Duration::from_secs(60), what, || async {
        w.active(client).await
    })
    .await;
    t0.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_watch_is_active_a_standby_takes_over_and_every_crossing_is_signalled_and_delivered_once(
) {
    let t_test = Instant::now();
    let h = Harness::start().await;
    let log = h.dir.path().join("stages.log");
    let data = h.dir.path().join("data");
    let (hook, calls) = common::webhook_receiver().await;
    let client = reqwest::Client::new();

    // 1. reference data (gpt-4o $2.50 / $10 per M tokens; key-N → team tN) and a budget per
    //    team: 0.01 USD this month, block at 100 %, the receiver as its webhook
    common::publish_reference(&h, TENANTS).await;
    for n in 1..=3 {
        common::create_blocking_budget(&h, &format!("b{n}"), &format!("team=t{n}"), "0.01", &hook);
    }

    // 2. the pipeline, and two watch instances with the same [watch] (their own ports)
    let mut stages = Children::default();
    stages.0.push(spawn_stage(
        &h,
        "enrich",
        &[("METERLINE_ENRICH__LISTEN", "127.0.0.1:0".into())],
        &log,
    ));
    stages.0.push(spawn_stage(
        &h,
        "aggregate",
        &[
            ("METERLINE_AGGREGATE__LISTEN", "127.0.0.1:0".into()),
            ("METERLINE_AGGREGATE__DATA_DIR", data.display().to_string()),
            ("METERLINE_AGGREGATE__FLUSH_MS", "500".into()),
        ],
        &log,
    ));
    let ports = [
        meterline::broker::free_port(),
        meterline::broker::free_port(),
    ];
    let mut w = [
        Some(Watch::spawn(&h, ports[0], &data, &log)),
        Some(Watch::spawn(&h, ports[1], &data, &log)),
    ];

    // 3. exactly one active, the other standby
    eventually(
        Duration::from_secs(60),
        "one active, one standby",
        || async {
            let (a, b) = (w[0].as_ref().unwrap(), w[1].as_ref().unwrap());
            (a.active(&client).await && b.standby(&client).await)
                || (b.active(&client).await && a.standby(&client).await)
        },
    )
    .await;
    let first = if w[0].as_ref().unwrap().active(&client).await {
        0
    } else {
        1
    };
    let other = 1 - first;
    assert_eq!(w[first].as_ref().unwrap().active_metric(&client).await, 1.0);
    assert_eq!(w[other].as_ref().unwrap().active_metric(&client).await, 0.0);
    eprintln!("watch {first} active, watch {other} standby");

    // 4. crossing 1, by the first active instance
    cross(&h, &calls, "b1", "key-1").await;

    // 5. SIGKILL the active one: the standby takes over
    let killed_at = Instant::now();
    w[first] = None; // SIGKILL (Watch's drop)
    let dead = killed_at.elapsed();
    let kill_takeover = takeover(
        &client,
        w[other].as_ref().unwrap(),
        "the standby takes over after SIGKILL",
    )
    .await
        + dead;
    eprintln!(
        "takeover after SIGKILL of the active instance: {:.2} s (lease session timeout 6 s)",
        kill_takeover.as_secs_f64()
    );
    assert!(
        kill_takeover < Duration::from_secs(15),
        "takeover took {kill_takeover:?}"
    );
    cross(&h, &calls, "b2", "key-2").await;

    // 6. the killed instance back: it waits as a standby, the active one stays active
    w[first] = Some(Watch::spawn(&h, ports[first], &data, &log));
    eventually(
        Duration::from_secs(60),
        "the restarted instance is a standby",
        || async { w[first].as_ref().unwrap().standby(&client).await },
    )
    .await;
    assert!(
        w[other].as_ref().unwrap().active(&client).await,
        "a standby joining does not move the lease"
    );

    // 7. SIGSTOP the active one (it stalls believing it is active): the standby takes over,
    //    crossing 3 happens under it, then the stalled one wakes with crossing 3 to read
    w[other].as_ref().unwrap().signal(libc::SIGSTOP);
    let stall_takeover = takeover(
        &client,
        w[first].as_ref().unwrap(),
        "the standby takes over from a stalled instance",
    )
    .await;
    eprintln!(
        "takeover from a stalled (SIGSTOPped) active instance: {:.2} s",
        stall_takeover.as_secs_f64()
    );
    cross(&h, &calls, "b3", "key-3").await;
    w[other].as_ref().unwrap().signal(libc::SIGCONT);
    let woke = Instant::now();
    eventually(
        Duration::from_secs(60),
        "the woken instance steps down to standby",
        || async { w[other].as_ref().unwrap().standby(&client).await },
    )
    .await;
    eprintln!(
        "the woken instance was standby again after {:.2} s",
        woke.elapsed().as_secs_f64()
    );
    assert!(w[first].as_ref().unwrap().active(&client).await);

    // 8. every crossing exactly once on the topic and at the receiver, with its alert id
    let mut expected_ids = vec![];
    for b in ["b1", "b2", "b3"] {
        let offsets = signals_for(&h, b).await;
        assert_eq!(offsets.len(), 1, "{b}: signals on the topic: {offsets:?}");
        assert_eq!(calls_for(&calls, b), 1, "{b}: webhook calls");
        expected_ids.push(format!("{}/0/{}", topics::BUDGET_SIGNALS, offsets[0]));
    }
    let ids: Vec<String> = calls
        .lock()
        .unwrap()
        .iter()
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(ids, expected_ids, "each delivery names its alert");
    // what the woken instance tried (whether it got to try before it saw the lease gone is
    // a race; either way nothing of it counted)
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    for l in text
        .lines()
        .filter(|l| l.contains("fenced: another instance"))
    {
        eprintln!("  {l}");
    }
    eprintln!("took {:.1} s", t_test.elapsed().as_secs_f64());
}
