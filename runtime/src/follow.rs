//! The one topic follower: read topics from their beginning to where they end now, then keep
//! following them. The reference topics (prices, tenants, budgets, budget signals, anomalies)
//! are small and compacted; every reader of them — enrich's price book, the edge's
//! enforcement state, the budget tracker, the API's budget report, the admin CLI — goes
//! through here, so "caught up" means the same thing everywhere.
//!
//! Caught up is judged by position, not by the last record seen: compaction and aborted
//! transactions leave offsets without a record, and the consumer's position says how far it
//! really is.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::kafka::KafkaConfig;
use crate::Error;

/// Reads `topics` from the beginning and knows when it has reached where they ended at
/// [`TopicFollower::start`].
/// `C` is the consumer or a borrow of it (a reader that goes on with the same consumer).
pub struct TopicFollower<C: Borrow<BaseConsumer> = BaseConsumer> {
    consumer: C,
    /// (topic, partition, first offset, end offset) at start, of every partition.
    ranges: Vec<(String, i32, i64, i64)>,
    /// Next offset to read per (topic, partition), from records and positions.
    next: HashMap<(String, i32), i64>,
    caught_up: bool,
}

/// One record as read: where it is and its value (`None`: a tombstone).
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub payload: Option<&'a [u8]>,
}

/// A consumer for reading whole topics: assigned (no group membership), committed data only.
pub fn reader(kafka: &KafkaConfig, role: &str) -> Result<BaseConsumer, Error> {
    kafka
        .client(role)
        .set("group.id", format!("meterline-{role}"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "false")
        .create()
        .map_err(|source| Error::Kafka {
            what: format!("create the {role} reader"),
            source,
        })
}

/// How many partitions `topic` has (0 when it does not exist).
pub fn partition_count(c: &BaseConsumer, topic: &str) -> Result<i32, Error> {
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|source| Error::Kafka {
            what: format!("metadata of {topic}"),
            source,
        })?;
    Ok(md
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len() as i32))
}

impl<C: Borrow<BaseConsumer>> TopicFollower<C> {
    /// Assigns every partition of `topics` from its beginning and notes where each ends now.
    pub fn start(consumer: C, topics: &[&str]) -> Result<Self, Error> {
        let mut tpl = TopicPartitionList::new();
        let mut ranges = vec![];
        for &topic in topics {
            for p in 0..partition_count(consumer.borrow(), topic)? {
                let (lo, hi) = consumer
                    .borrow()
                    .fetch_watermarks(topic, p, Duration::from_secs(10))
                    .map_err(|source| Error::Kafka {
                        what: format!("end of {topic}/{p}"),
                        source,
                    })?;
                tpl.add_partition_offset(topic, p, Offset::Beginning)
                    .map_err(|source| Error::Kafka {
                        what: format!("assign {topic}/{p}"),
                        source,
                    })?;
                ranges.push((topic.to_string(), p, lo, hi));
            }
        }
        consumer
            .borrow()
            .assign(&tpl)
            .map_err(|source| Error::Kafka {
                what: "assign".into(),
                source,
            })?;
        let caught_up = ranges.iter().all(|(_, _, lo, hi)| hi <= lo);
        Ok(TopicFollower {
            consumer,
            ranges,
            next: HashMap::new(),
            caught_up,
        })
    }

    /// Whether every partition has been read up to where it ended at start.
    pub fn caught_up(&self) -> bool {
        self.caught_up
    }

    /// The next offset to read of `topic`/`partition` (0 when nothing was read).
    pub fn next_offset(&self, topic: &str, partition: i32) -> i64 {
        self.next
            .get(&(topic.to_string(), partition))
            .copied()
            .unwrap_or(0)
    }

    /// Every partition of the topics with its first offset and its end offset (the offset
    /// after its last record) at [`TopicFollower::start`]: what "caught up" reaches.
    pub fn ranges(&self) -> impl Iterator<Item = (&str, i32, i64, i64)> + '_ {
        self.ranges
            .iter()
            .map(|(t, p, lo, hi)| (t.as_str(), *p, *lo, *hi))
    }

    /// Waits up to `wait` for one record and hands it to `apply(topic, payload)` (tombstones
    /// are skipped).
    pub fn poll(
        &mut self,
        wait: Duration,
        mut apply: impl FnMut(&str, &[u8]),
    ) -> Result<(), Error> {
        self.poll_records(wait, |r| {
            if let Some(v) = r.payload {
                apply(r.topic, v)
            }
        })
    }

    /// As [`TopicFollower::poll`], with the record's partition and offset. Records past the
    /// end noted at start are handed over too (the topics keep growing): a reader of a fixed
    /// range compares the offset with [`TopicFollower::ranges`].
    pub fn poll_records(
        &mut self,
        wait: Duration,
        mut apply: impl FnMut(Record<'_>),
    ) -> Result<(), Error> {
        match self.consumer.borrow().poll(wait) {
            Some(Ok(msg)) => {
                self.next
                    .insert((msg.topic().to_string(), msg.partition()), msg.offset() + 1);
                apply(Record {
                    topic: msg.topic(),
                    partition: msg.partition(),
                    offset: msg.offset(),
                    payload: msg.payload(),
                });
            }
            Some(Err(source)) => {
                return Err(Error::Kafka {
                    what: "poll".into(),
                    source,
                })
            }
            None => {
                if let Ok(pos) = self.consumer.borrow().position() {
                    for e in pos.elements() {
                        if let Offset::Offset(o) = e.offset() {
                            let n = self
                                .next
                                .entry((e.topic().to_string(), e.partition()))
                                .or_insert(o);
                            *n = (*n).max(o);
                        }
                    }
                }
            }
        }
        if !self.caught_up {
            self.caught_up = self.ranges.iter().all(|(t, p, lo, hi)| {
                hi <= lo || self.next.get(&(t.clone(), *p)).is_some_and(|n| n >= hi)
            });
        }
        Ok(())
    }

    /// Reads until caught up, within `timeout`.
    pub fn read_to_end(
        &mut self,
        timeout: Duration,
        mut apply: impl FnMut(&str, &[u8]),
    ) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        while !self.caught_up {
            if Instant::now() > deadline {
                let mut topics: Vec<&str> = self
                    .ranges
                    .iter()
                    .filter(|(_, _, lo, hi)| hi > lo)
                    .map(|(t, _, _, _)| t.as_str())
                    .collect();
                topics.dedup();
                return Err(Error::NotCaughtUp {
                    topics: topics.join(", "),
                    timeout,
                });
            }
            self.poll(Duration::from_millis(100), &mut apply)?;
        }
        Ok(())
    }
}

impl TopicFollower<BaseConsumer> {
    /// Keeps following on a thread named `name` until `stop`; poll errors are logged and
    /// retried (librdkafka reconnects by itself).
    pub fn follow_on_thread(
        mut self,
        name: &str,
        stop: CancellationToken,
        mut apply: impl FnMut(&str, &[u8]) + Send + 'static,
    ) -> Result<(), Error> {
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                while !stop.is_cancelled() {
                    if let Err(e) = self.poll(Duration::from_millis(200), &mut apply) {
                        warn!(error = %e, "topic follower");
                    }
                }
            })
            .map_err(|source| Error::Thread {
                name: name.into(),
                source,
            })?;
        Ok(())
    }
}

/// Every record of `topic` (all partitions) up to where it ends now, in order per partition,
/// with the next offset of partition 0 (where a reader continues a one-partition topic).
pub fn read_to_end(
    consumer: &BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> Result<(Vec<Vec<u8>>, i64), Error> {
    let mut f = TopicFollower::start(consumer, &[topic])?;
    let mut out = vec![];
    f.read_to_end(timeout, |_, v| out.push(v.to_vec()))?;
    Ok((out, f.next_offset(topic, 0)))
}
