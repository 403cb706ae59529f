//! Rebuilding a partition's dedup window from the stage's own committed output.
//!
//! Every priced record carries the event id, its content fingerprint, its `occurred_at` and the
//! partition watermark after
//! it (headers, so nothing is decoded). Rejected records are not read: only what was billed is
//! remembered. Reading back from the end of output partition `p`:
//! with `W` the watermark of the last record, an earlier record is needed iff its
//! `occurred_at >= W - window`. Watermarks never decrease along the log, and a record's
//! `occurred_at` is at most the watermark written with it, so once a record's watermark is
//! below `W - window`, no record before it is needed: the scan stops there. Chunks double in
//! size going back, so the work is proportional to the window, not to the topic.

use std::time::Duration;

use chrono::{DateTime, Utc};
use meterline_schemas::topics::{self, headers};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Headers;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::dedup::DedupWindow;
use crate::Error;

struct Seen {
    id: String,
    fingerprint: u64,
    occurred: i64,
    watermark: i64,
}

fn header_i64(msg: &impl Message, name: &str) -> Option<i64> {
    msg.headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|s| s.parse().ok())
}

/// Reads committed output records of partition `p` in `[from, to)`.
fn read_range(c: &BaseConsumer, p: i32, from: i64, to: i64) -> Result<Vec<Seen>, Error> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topics::USAGE_PRICED, p, Offset::Offset(from))
        .map_err(Error::kafka)?;
    c.assign(&tpl).map_err(Error::kafka)?;
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if std::time::Instant::now() > deadline {
            return Err(Error::Broker(format!(
                "reading {}[{p}] {from}..{to} timed out",
                topics::USAGE_PRICED
            )));
        }
        match c.poll(Duration::from_millis(200)) {
            None => continue,
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(e))
                if matches!(e.rdkafka_error_code(), Some(RDKafkaErrorCode::PartitionEOF)) =>
            {
                break
            }
            Some(Err(e)) => return Err(Error::kafka(e)),
            Some(Ok(m)) => {
                if m.offset() >= to {
                    break;
                }
                let id = m
                    .headers()
                    .and_then(|hs| hs.iter().find(|h| h.key == headers::EVENT_ID))
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned());
                if let (Some(id), Some(occurred), Some(watermark)) = (
                    id,
                    header_i64(&m, headers::OCCURRED_AT),
                    header_i64(&m, headers::WATERMARK),
                ) {
                    // Records written before fingerprints existed have none: 0 = unknown.
                    let fingerprint = m
                        .headers()
                        .and_then(|hs| hs.iter().find(|h| h.key == headers::FINGERPRINT))
                        .and_then(|h| h.value)
                        .and_then(|v| std::str::from_utf8(v).ok())
                        .and_then(|s| u64::from_str_radix(s, 16).ok())
                        .unwrap_or(0);
                    out.push(Seen {
                        id,
                        fingerprint,
                        occurred,
                        watermark,
                    });
                }
                if m.offset() + 1 >= to {
                    break;
                }
            }
        }
    }
    c.unassign().map_err(Error::kafka)?;
    Ok(out)
}

/// The dedup window of partition `p` as the committed output leaves it.
pub fn rebuild(c: &BaseConsumer, p: i32, window: chrono::Duration) -> Result<DedupWindow, Error> {
    let mut dedup = DedupWindow::new(window);
    let (lo, hi) = c
        .fetch_watermarks(topics::USAGE_PRICED, p, Duration::from_secs(10))
        .map_err(Error::kafka)?;
    let window_micros = window.num_microseconds().unwrap_or(i64::MAX);
    let mut end = hi;
    let mut chunk = 1024i64;
    let mut horizon: Option<i64> = None;
    let mut kept: Vec<Seen> = Vec::new();
    while end > lo {
        let start = (end - chunk).max(lo);
        let seen = read_range(c, p, start, end)?;
        if horizon.is_none() {
            horizon = seen
                .iter()
                .map(|s| s.watermark)
                .max()
                .map(|w| w.saturating_sub(window_micros));
        }
        let h = horizon.unwrap_or(i64::MIN);
        let done = seen.iter().any(|s| s.watermark < h);
        kept.extend(seen.into_iter().filter(|s| s.occurred >= h));
        if done {
            break;
        }
        end = start;
        chunk = chunk.saturating_mul(2);
    }
    for s in kept {
        let at = |us: i64| DateTime::<Utc>::from_timestamp_micros(us).unwrap_or_default();
        dedup.restore(&s.id, s.fingerprint, at(s.occurred), at(s.watermark));
    }
    dedup.commit();
    Ok(dedup)
}
