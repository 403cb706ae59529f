//! A lease: at most one holder among the instances of a stage, from Kafka's own group
//! membership, so a stage can run as several instances with exactly one active.
//!
//! Every instance joins consumer group `group_id` on a one-partition topic; the member the
//! group coordinator assigns partition 0 holds the lease. The assignor is cooperative-sticky:
//! a standby joining or leaving never moves partition 0 away from a live holder, and a holder
//! that stops cleanly leaves the group, so its successor is assigned at once. A holder that
//! dies (SIGKILL, a lost host) is dropped by the coordinator after `session_timeout`, and the
//! partition goes to a standby at its next heartbeat.
//!
//! Holding the lease is a belief of this process, not a guarantee: a holder that stalls for
//! longer than the session timeout (a long GC-like pause, SIGSTOP, a network partition) has
//! lost it before it can notice. Whatever the holder writes must therefore also be fenced by
//! the broker (a fixed `transactional.id`, whose `init_transactions` by the next holder makes
//! every later write of the old one fail): the lease decides who *should* work, the fence
//! makes sure only that one's writes count.
//!
//! Nothing is written to the lease topic; a record found there is ignored.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::TopicPartitionList;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::kafka::KafkaConfig;
use crate::Error;

/// What the lease consumer's rebalances decided, shared with the stage's threads.
#[derive(Default)]
struct State {
    held: bool,
    /// The current term's token: cancelled the moment the lease is lost.
    term: Option<CancellationToken>,
    /// A fatal error of the lease consumer (its thread has ended).
    failed: Option<KafkaError>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Not the holder any more: the running term (if any) is cancelled at once.
    fn lose(&self, why: &str) {
        let mut s = self.lock();
        if s.held {
            info!(why, "lease lost");
        }
        s.held = false;
        if let Some(t) = s.term.take() {
            t.cancel();
        }
        self.changed.notify_all();
    }

    fn gain(&self) {
        let mut s = self.lock();
        if !s.held {
            info!("lease assigned");
        }
        s.held = true;
        self.changed.notify_all();
    }
}

/// Whether a rebalance's partition list names the lease's partition 0.
fn names_the_lease(topic: &str, tpl: &TopicPartitionList) -> bool {
    tpl.elements()
        .iter()
        .any(|e| e.topic() == topic && e.partition() == 0)
}

/// The lease consumer's callbacks: revocations (also a lost assignment: a session that timed
/// out) take the lease away before librdkafka unassigns; assignments grant it once done.
struct LeaseContext {
    topic: String,
    shared: Arc<Shared>,
}

impl ClientContext for LeaseContext {}

impl ConsumerContext for LeaseContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) if names_the_lease(&self.topic, tpl) => {
                self.shared.lose("partition 0 revoked")
            }
            Rebalance::Error(e) => self.shared.lose(&format!("rebalance error: {e}")),
            _ => {}
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            if names_the_lease(&self.topic, tpl) {
                self.shared.gain();
            }
        }
    }
}

/// Membership of the lease group, kept by a thread until dropped. Dropping it leaves the
/// group (a standby is assigned the lease at once): drop it only once the work of the last
/// term has ended.
pub struct Lease {
    shared: Arc<Shared>,
    quit: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
    group_id: String,
}

impl Lease {
    /// Joins `group_id` on `topic` (one partition) with `session_timeout`: how long a holder
    /// that stopped heartbeating keeps the lease. Brokers refuse a session timeout below their
    /// `group.min.session.timeout.ms` (6 s by default).
    pub fn join(
        kafka: &KafkaConfig,
        role: &str,
        topic: &str,
        group_id: &str,
        session_timeout: Duration,
    ) -> Result<Lease, Error> {
        let shared = Arc::new(Shared::default());
        let context = LeaseContext {
            topic: topic.to_string(),
            shared: shared.clone(),
        };
        let session_ms = session_timeout.as_millis().max(1) as u64;
        let consumer: BaseConsumer<LeaseContext> = kafka
            .client(role)
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "latest")
            .set("enable.partition.eof", "false")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", session_ms.to_string())
            // A standby learns of a rebalance at its next heartbeat: the takeover after a
            // holder's death is the session timeout plus at most this.
            .set(
                "heartbeat.interval.ms",
                (session_ms / 6).max(100).to_string(),
            )
            .create_with_context(context)
            .map_err(|source| Error::Kafka {
                what: format!("create the lease consumer of group {group_id}"),
                source,
            })?;
        consumer
            .subscribe(&[topic])
            .map_err(|source| Error::Kafka {
                what: format!("subscribe to {topic}"),
                source,
            })?;
        let quit = CancellationToken::new();
        let (thread_shared, thread_quit) = (shared.clone(), quit.clone());
        let thread = std::thread::Builder::new()
            .name(role.into())
            .spawn(move || keep_membership(consumer, &thread_shared, &thread_quit))
            .map_err(|source| Error::Thread {
                name: role.into(),
                source,
            })?;
        Ok(Lease {
            shared,
            quit,
            thread: Some(thread),
            group_id: group_id.to_string(),
        })
    }

    /// Whether this instance holds the lease now (as far as it knows).
    pub fn held(&self) -> bool {
        self.shared.lock().held
    }

    /// Waits until the lease is held and returns the term's token: a child of `stop`, also
    /// cancelled the moment the lease is lost. `None` once `stop` is cancelled.
    pub fn acquire(&self, stop: &CancellationToken) -> Result<Option<CancellationToken>, Error> {
        let mut s = self.shared.lock();
        loop {
            if let Some(source) = s.failed.clone() {
                return Err(Error::Kafka {
                    what: format!("lease group {}", self.group_id),
                    source,
                });
            }
            if stop.is_cancelled() {
                return Ok(None);
            }
            if s.held {
                let term = stop.child_token();
                s.term = Some(term.clone());
                return Ok(Some(term));
            }
            s = self
                .shared
                .changed
                .wait_timeout(s, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.quit.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Polls the lease consumer (heartbeats and rebalance callbacks run in `poll`) until `quit`;
/// the consumer is closed on the way out, leaving the group.
fn keep_membership(
    consumer: BaseConsumer<LeaseContext>,
    shared: &Shared,
    quit: &CancellationToken,
) {
    while !quit.is_cancelled() {
        match consumer.poll(Duration::from_millis(100)) {
            // Nothing is written to the lease topic; a record there carries no meaning.
            Some(Ok(_)) | None => {}
            Some(Err(e)) if crate::kafka::retryable(&e) => {
                // librdkafka reconnects and rejoins by itself; a holder that cannot heartbeat
                // loses the lease through the rebalance callback once its session ends.
                warn!(error = %e, "lease consumer");
            }
            Some(Err(e)) => {
                warn!(error = %e, "lease consumer failed");
                shared.lock().failed = Some(e);
                shared.lose("lease consumer failed");
                break;
            }
        }
    }
    shared.lose("leaving the lease group");
    drop(consumer);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_partition_0_of_the_lease_topic_is_the_lease() {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition("other", 0);
        tpl.add_partition("lease", 1);
        assert!(!names_the_lease("lease", &tpl));
        tpl.add_partition("lease", 0);
        assert!(names_the_lease("lease", &tpl));
    }

    #[test]
    fn losing_the_lease_cancels_the_term_and_acquire_waits_for_the_next() {
        let shared = Arc::new(Shared::default());
        let lease = Lease {
            shared: shared.clone(),
            quit: CancellationToken::new(),
            thread: None,
            group_id: "g".into(),
        };
        let stop = CancellationToken::new();
        shared.gain();
        let term = lease.acquire(&stop).unwrap().expect("held");
        assert!(lease.held() && !term.is_cancelled());
        shared.lose("test");
        assert!(term.is_cancelled(), "the term ends with the lease");
        assert!(!lease.held());
        // nothing held: acquire waits, and gives up with the stop
        let s2 = shared.clone();
        let regain = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            s2.gain();
        });
        let next = lease.acquire(&stop).unwrap().expect("held again");
        regain.join().unwrap();
        assert!(!next.is_cancelled());
        stop.cancel();
        assert!(next.is_cancelled(), "a term is a child of stop");
        assert!(lease.acquire(&stop).unwrap().is_none());
        // a failed consumer is an error, not a wait
        shared.lock().failed = Some(KafkaError::Canceled);
        assert!(lease.acquire(&CancellationToken::new()).is_err());
    }
}
