//! What the CLI does with the rejected topic: list and replay rejected events.

use crate::Error;
use meterline_runtime::kafka::KafkaConfig;
use meterline_schemas::topics::{self, headers};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

/// How long reading the rejected topic to its end may take.
const LOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// The consumer group whose committed offsets mark what `rejected replay` has re-submitted.
pub const REPLAY_GROUP: &str = "meterline-rejected-replay";

/// Codes whose events can price once reference data is fixed (and so are replayed).
/// `no_price`, `no_rate`, `zero_cost`: a price (change) can fix them. `overflow`: a corrected
/// price can. `id_conflict`: replaying says "this is a distinct call" and bills it under a
/// derived id (see the enrich stage). Not replayable: `undecodable` (needs a newer meterline)
/// and `no_quantity` (the event itself bills nothing).
pub const REPLAYABLE: [&str; 5] = [
    "no_price",
    "no_rate",
    "zero_cost",
    "overflow",
    "id_conflict",
];

/// One record of `meterline.usage.rejected`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RejectedRecord {
    pub partition: i32,
    pub offset: i64,
    pub event_id: Option<String>,
    pub code: String,
    pub field: String,
    pub reason: String,
    pub source: String,
    /// How many times the event had been replayed before this rejection.
    pub replays: u32,
    /// This record has been re-submitted by `rejected replay` (or passed over as not
    /// replayable): it is no longer pending.
    pub replayed: bool,
    /// Whether `rejected replay` re-submits this kind of rejection.
    pub replayable: bool,
    #[serde(skip)]
    pub key: Option<Vec<u8>>,
    #[serde(skip)]
    pub value: Vec<u8>,
}

fn header(m: &impl Message, name: &str) -> String {
    m.headers()
        .and_then(|hs| hs.iter().find(|h| h.key == name))
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

fn replay_consumer(kafka: &KafkaConfig) -> Result<BaseConsumer, Error> {
    kafka
        .client("rejected")
        .set("group.id", REPLAY_GROUP)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .map_err(Error::kafka)
}

/// Rejected records not yet replayed (after the replay group's offsets), or all with `all`.
pub fn rejected(kafka: &KafkaConfig, all: bool) -> Result<Vec<RejectedRecord>, Error> {
    let c = replay_consumer(kafka)?;
    read_rejected(&c, all)
}

fn read_rejected(c: &BaseConsumer, all: bool) -> Result<Vec<RejectedRecord>, Error> {
    let md = c
        .fetch_metadata(Some(topics::USAGE_REJECTED), Duration::from_secs(10))
        .map_err(Error::kafka)?;
    let parts = md
        .topics()
        .first()
        .map(|t| t.partitions().len())
        .unwrap_or(0) as i32;
    let mut tpl = TopicPartitionList::new();
    for p in 0..parts {
        tpl.add_partition(topics::USAGE_REJECTED, p);
    }
    let committed = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .map_err(Error::kafka)?;
    let mut out = Vec::new();
    for p in 0..parts {
        let (lo, hi) = c
            .fetch_watermarks(topics::USAGE_REJECTED, p, Duration::from_secs(10))
            .map_err(Error::kafka)?;
        let done_before = match committed
            .find_partition(topics::USAGE_REJECTED, p)
            .map(|e| e.offset())
        {
            Some(Offset::Offset(o)) => o,
            _ => lo,
        };
        let from = if all { lo } else { done_before.max(lo) };
        if from >= hi {
            continue;
        }
        let mut one = TopicPartitionList::new();
        one.add_partition_offset(topics::USAGE_REJECTED, p, Offset::Offset(from))
            .map_err(Error::kafka)?;
        c.assign(&one).map_err(Error::kafka)?;
        let deadline = std::time::Instant::now() + LOAD_TIMEOUT;
        loop {
            let pos = c.position().ok().and_then(|t| {
                t.find_partition(topics::USAGE_REJECTED, p)
                    .map(|e| e.offset())
            });
            if matches!(pos, Some(Offset::Offset(o)) if o >= hi) {
                break;
            }
            if std::time::Instant::now() > deadline {
                return Err(Error::Broker("reading the rejected topic timed out".into()));
            }
            let Some(m) = c.poll(Duration::from_millis(200)) else {
                continue;
            };
            let m = m.map_err(Error::kafka)?;
            let code = header(&m, headers::REASON_CODE);
            out.push(RejectedRecord {
                partition: p,
                offset: m.offset(),
                replayed: m.offset() < done_before,
                replayable: REPLAYABLE.contains(&code.as_str()),
                event_id: Some(header(&m, headers::EVENT_ID)).filter(|s| !s.is_empty()),
                code,
                field: header(&m, headers::REASON_FIELD),
                reason: header(&m, headers::REASON),
                source: header(&m, headers::SOURCE),
                replays: header(&m, headers::REPLAYS).parse().unwrap_or(0),
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            });
            if m.offset() + 1 >= hi {
                break;
            }
        }
    }
    c.unassign().map_err(Error::kafka)?;
    Ok(out)
}

/// What `rejected replay` did.
#[derive(Debug, Default)]
pub struct Replay {
    pub replayed: usize,
    /// Same event id twice among the pending records: re-submitted once.
    pub duplicates: usize,
    /// Undecodable records: they need a newer meterline, not new prices; left in place.
    pub not_replayable: usize,
}

/// Re-submits pending replayable rejections to `meterline.usage.raw` (same partition and key,
/// `ml-replays` + 1) and advances the replay group past them, in one transaction: each is
/// re-submitted once even if this command crashes and is run again. Enrich prices them with the
/// reference data of now; those that still cannot be priced come back as new rejections.
pub fn replay(kafka: &KafkaConfig) -> Result<Replay, Error> {
    let c = replay_consumer(kafka)?;
    let pending = read_rejected(&c, false)?;
    let mut report = Replay::default();
    if pending.is_empty() {
        return Ok(report);
    }
    let p: BaseProducer = kafka
        .client("rejected-replay")
        .set("transactional.id", "meterline-rejected-replay")
        .create()
        .map_err(Error::kafka)?;
    let t = Duration::from_secs(30);
    p.init_transactions(t).map_err(Error::kafka)?;
    p.begin_transaction().map_err(Error::kafka)?;
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    let mut seen: HashSet<String> = HashSet::new();
    for r in &pending {
        next.insert(r.partition, r.offset + 1);
        if !REPLAYABLE.contains(&r.code.as_str()) {
            report.not_replayable += 1;
            continue;
        }
        if let Some(id) = &r.event_id {
            if !seen.insert(id.clone()) {
                report.duplicates += 1;
                continue;
            }
        }
        let replays = (r.replays + 1).to_string();
        let hs = OwnedHeaders::new().insert(Header {
            key: headers::REPLAYS,
            value: Some(replays.as_bytes()),
        });
        let mut rec = BaseRecord::to(topics::USAGE_RAW)
            .partition(r.partition)
            .payload(r.value.as_slice())
            .headers(hs);
        if let Some(k) = &r.key {
            rec = rec.key(k.as_slice());
        }
        p.send(rec).map_err(|(e, _)| Error::kafka(e))?;
        report.replayed += 1;
    }
    let mut offsets = TopicPartitionList::new();
    for (part, o) in next {
        offsets
            .add_partition_offset(topics::USAGE_REJECTED, part, Offset::Offset(o))
            .map_err(Error::kafka)?;
    }
    // Not-replayable records stay readable with `rejected list --all`.
    let meta = c
        .group_metadata()
        .ok_or_else(|| Error::Broker("no consumer group metadata (not in a group yet)".into()))?;
    p.send_offsets_to_transaction(&offsets, &meta, t)
        .map_err(Error::kafka)?;
    p.commit_transaction(t).map_err(Error::kafka)?;
    Ok(report)
}
