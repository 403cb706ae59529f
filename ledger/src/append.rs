//! The sink's commits without the table's file list.
//!
//! delta-rs 1.1 commits on a snapshot that holds every live file of the table, and brings that
//! list forward after each commit: a flush then costs as much as the table has files (16 ms
//! with 8 files, 200 ms with 800, measured). A flush is a blind append (new files and its
//! partitions' `txn` actions), and all it needs to know is the next free version and the txn
//! versions of its partitions. [`Tip`] keeps exactly that, read forward commit by commit from
//! the log; a commit is one put-if-absent of `_delta_log/<tip + 1>.json` (delta-rs's own
//! `LogStore::write_commit_entry`, bytes from its `CommitData`). Losing the version to
//! another writer means reading its commit (its txn actions may fence this flush) and trying
//! the next one. Compaction and the anomalies table still commit through delta-rs's
//! `CommitBuilder` (they remove files, which needs the list).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use deltalake::kernel::transaction::{CommitData, TransactionError};
use deltalake::kernel::Action;
use deltalake::logstore::{CommitOrBytes, LogStore};
use deltalake::protocol::DeltaOperation;

use crate::storage::run;
use crate::{delta, txn_app_id, Error, TXN_APP_PREFIX};

/// What a writer needs of one commit of the log.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct CommitEntry {
    /// Its txn actions: partition → version (our app ids only).
    pub txns: Vec<(i32, i64)>,
    /// The paths it adds.
    pub adds: Vec<String>,
    /// It changes the table's metadata or protocol (a schema, a property, a feature).
    pub changes_table: bool,
}

impl CommitEntry {
    /// Parses a commit file (one action per line).
    pub(crate) fn parse(bytes: &[u8]) -> Result<CommitEntry, Error> {
        let mut entry = CommitEntry::default();
        // (lines of only whitespace, a `\r\n` line end of another engine, are no actions)
        for line in bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.trim_ascii().is_empty())
        {
            let action: serde_json::Value = serde_json::from_slice(line)?;
            if let Some(txn) = action.get("txn") {
                // exactly our app id (`…-p01` is not partition 1's, as delta-rs sees it)
                let partition = txn["appId"].as_str().and_then(|app| {
                    let p: i32 = app.strip_prefix(TXN_APP_PREFIX)?.parse().ok()?;
                    (txn_app_id(p) == app).then_some(p)
                });
                if let (Some(p), Some(v)) = (partition, txn["version"].as_i64()) {
                    entry.txns.push((p, v));
                }
            } else if let Some(add) = action.get("add") {
                if let Some(path) = add["path"].as_str() {
                    entry.adds.push(path.to_string());
                }
            } else if action.get("metaData").is_some() || action.get("protocol").is_some() {
                entry.changes_table = true;
            }
        }
        Ok(entry)
    }
}

/// Commit `version` of the log, `None` if there is none (yet, or removed behind a checkpoint).
pub(crate) fn read_commit(
    log_store: &dyn LogStore,
    version: u64,
) -> Result<Option<CommitEntry>, Error> {
    match run(log_store.read_commit_entry(version)).map_err(delta)? {
        Some(bytes) => Ok(Some(CommitEntry::parse(&bytes)?)),
        None => Ok(None),
    }
}

/// How long a tip is trusted without reading the log, at most. Reading forward from it stops
/// at the first missing version; a version is only ever missing behind the newest one when
/// log cleanup removed it, which needs it to be older than `delta.logRetentionDuration` (30
/// days by default). A tip confirmed within the hour, and within half the table's retention
/// ([`Tip::at`]), cannot have such a gap after it.
pub(crate) const TIP_TRUST: Duration = Duration::from_secs(3600);

/// How long a version known to be the newest is trusted without listing the log, in a table
/// keeping its log for `log_retention`: [`TIP_TRUST`], or half that retention if shorter.
pub(crate) fn trust(log_retention: Duration) -> Duration {
    TIP_TRUST.min(log_retention / 2)
}

/// The log as a writer of blind appends knows it: the newest version it has seen and the txn
/// versions committed since it started (at a version the table was loaded at). A partition
/// absent from `txns` has the txn version it had where the tip started: no commit since set it.
#[derive(Debug)]
pub(crate) struct Tip {
    pub version: u64,
    /// Partition → (txn version, the version of the commit that set it), for the partitions
    /// whose txn a commit after the start set.
    pub txns: HashMap<i32, (i64, u64)>,
    /// `delta.checkpointInterval` as of `base`.
    pub checkpoint_interval: u64,
    /// When the log last confirmed `version` (read or committed).
    pub confirmed: Instant,
    /// How long `version` is trusted after that: [`TIP_TRUST`], or half the table's log
    /// retention if that is shorter.
    pub trust: Duration,
}

impl Tip {
    /// A tip at `version` of a table whose checkpoint interval and log retention are these.
    pub(crate) fn at(version: u64, checkpoint_interval: u64, log_retention: Duration) -> Tip {
        Tip {
            version,
            txns: HashMap::new(),
            checkpoint_interval,
            confirmed: Instant::now(),
            trust: trust(log_retention),
        }
    }

    /// Takes in the commit of the next version.
    pub(crate) fn advance(&mut self, entry: &CommitEntry) {
        self.version += 1;
        for (p, v) in &entry.txns {
            self.txns.insert(*p, (*v, self.version));
        }
        self.confirmed = Instant::now();
    }

    pub(crate) fn is_trusted(&self) -> bool {
        self.confirmed.elapsed() < self.trust
    }
}

/// The outcome of trying to commit one version.
pub(crate) enum Attempt {
    Committed,
    /// Another writer has that version.
    Taken,
}

/// Serialises a blind append: its actions and the operation's commitInfo.
pub(crate) fn commit_bytes(
    actions: Vec<Action>,
    op: DeltaOperation,
) -> Result<bytes::Bytes, Error> {
    CommitData::new(actions, op, HashMap::new(), Vec::new())
        .get_bytes()
        .map_err(|e| delta(e.into()))
}

/// Writes `bytes` as commit `version` if no one has (put-if-absent).
pub(crate) fn try_commit(
    log_store: &dyn LogStore,
    version: u64,
    bytes: &bytes::Bytes,
) -> Result<Attempt, Error> {
    let written = run(log_store.write_commit_entry(
        version,
        CommitOrBytes::LogBytes(bytes.clone()),
        uuid::Uuid::new_v4(),
    ));
    match written {
        Ok(()) => Ok(Attempt::Committed),
        Err(TransactionError::VersionAlreadyExists(_)) => Ok(Attempt::Taken),
        Err(e) => Err(delta(e.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_entry_has_our_txns_its_adds_and_whether_it_changes_the_table() {
        let commit = br#"{"commitInfo":{"operation":"WRITE"}}
{"add":{"path":"date=2026-03-01/part-1-0-9-x.parquet","size":1,"dataChange":true}}
{"txn":{"appId":"meterline-usage-p1","version":9}}
{"txn":{"appId":"someone-else","version":3}}
"#;
        let e = CommitEntry::parse(commit).unwrap();
        assert_eq!(e.txns, [(1, 9)]);
        assert_eq!(e.adds, ["date=2026-03-01/part-1-0-9-x.parquet"]);
        assert!(!e.changes_table);
        let alter = br#"{"metaData":{"id":"x"}}"#;
        assert!(CommitEntry::parse(alter).unwrap().changes_table);
        let other_engine = b"{\"txn\":{\"appId\":\"meterline-usage-p01\",\"version\":4}}\r\n  \r\n";
        assert_eq!(
            CommitEntry::parse(other_engine).unwrap(),
            CommitEntry::default()
        );
    }

    #[test]
    fn a_tip_records_which_commit_set_each_txn() {
        let mut tip = Tip::at(7, 100, Duration::from_secs(30 * 86_400));
        tip.advance(&CommitEntry {
            txns: vec![(0, 41), (2, 5)],
            ..Default::default()
        });
        tip.advance(&CommitEntry::default());
        tip.advance(&CommitEntry {
            txns: vec![(0, 50)],
            ..Default::default()
        });
        assert_eq!(tip.version, 10);
        assert_eq!(tip.txns, HashMap::from([(0, (50, 10)), (2, (5, 8))]));
        assert!(tip.is_trusted());
        assert_eq!(tip.trust, TIP_TRUST);
        // a table keeping its log for 30 minutes: trusted for 15
        let short = Tip::at(7, 100, Duration::from_secs(1800));
        assert_eq!(short.trust, Duration::from_secs(900));
    }
}
