//! [`TableHandle`]: one Delta table of the ledger as its writer holds it — created on first
//! open, data files stored durably before a commit names them, commits on the newest
//! version. The usage table ([`crate::Ledger`]) and the anomalies table
//! ([`crate::AnomalyTable`]) are both written through one.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, StructType};
use deltalake::protocol::DeltaOperation;
use deltalake::table::config::TablePropertiesExt;
use deltalake::DeltaTable;
use object_store::ObjectStoreExt;
use url::Url;

use crate::append;
use crate::storage::{self, run};
use crate::{delta, io, Error, LedgerConfig, DATE_COLUMN};

/// A Delta table opened for writing.
pub(crate) struct TableHandle {
    url: Url,
    /// The table's directory when it is on the local file system (writes are fsynced there).
    local_dir: Option<PathBuf>,
    table: Mutex<DeltaTable>,
    /// When the loaded version was last known to be the newest (see [`TableHandle::newest`]).
    newest_seen: Mutex<Option<NewestSeen>>,
}

/// The loaded version, and when the log last showed no commit after it.
#[derive(Debug, Clone, Copy)]
struct NewestSeen {
    version: u64,
    at: Instant,
    /// How long that stays trusted ([`append::trust`]).
    trust: Duration,
}

/// What a table is made of when it is created.
pub(crate) struct TableDefinition<'a> {
    /// Its directory under the ledger URL (`usage`, `anomalies`).
    pub name: &'a str,
    pub comment: &'a str,
    /// Its columns, the `date` partition column included.
    pub schema: StructType,
}

impl TableHandle {
    /// The table `def.name` of `cfg` (under `data_dir` when `cfg.url` is empty), created if
    /// there is none yet.
    pub(crate) fn open(
        cfg: &LedgerConfig,
        data_dir: &Path,
        def: TableDefinition<'_>,
    ) -> Result<TableHandle, Error> {
        cfg.validate()?;
        let url = storage::table_url(cfg, data_dir, def.name)?;
        let mut table = storage::open_table(&url, &cfg.storage)?;
        if table.version().is_none() {
            let created = run(async {
                table
                    .clone()
                    .create()
                    .with_table_name(def.name)
                    .with_comment(def.comment)
                    .with_columns(def.schema.fields().cloned())
                    .with_partition_columns([DATE_COLUMN])
                    .await
                    .map_err(delta)
            });
            table = match created {
                Ok(t) => t,
                // another process created it meanwhile
                Err(e) => {
                    let t = storage::open_table(&url, &cfg.storage)?;
                    if t.version().is_none() {
                        return Err(e);
                    }
                    t
                }
            };
        }
        let local_dir = (url.scheme() == "file")
            .then(|| url.to_file_path().ok())
            .flatten();
        Ok(TableHandle {
            url,
            local_dir,
            table: Mutex::new(table),
            newest_seen: Mutex::new(None),
        })
    }

    /// The table's URL.
    pub(crate) fn url(&self) -> &Url {
        &self.url
    }

    /// The loaded table (the version last read or committed; `update_state` for the newest).
    pub(crate) fn lock(&self) -> Result<MutexGuard<'_, DeltaTable>, Error> {
        self.table
            .lock()
            .map_err(|_| Error::Fatal(format!("{}: table lock poisoned", self.url)))
    }

    /// The table at its newest version. delta-rs finds it by listing the log from the loaded
    /// version on, which lists the whole `_delta_log` directory on a local disk (2 ms of every
    /// query at 136 commits, more as the log grows). So:
    /// 1. while the loaded version was known to be the newest a short while ago (within
    ///    [`append::trust`]: no log cleanup can have removed the commit after it since, see
    ///    [`append::TIP_TRUST`]), one read of the next commit's file tells whether it still
    ///    is: absent, nothing changed;
    /// 2. otherwise delta-rs brings the table forward, and its version is the newest now.
    pub(crate) fn newest(&self) -> Result<MutexGuard<'_, DeltaTable>, Error> {
        let mut t = self.lock()?;
        let now = Instant::now();
        let mut seen = self
            .newest_seen
            .lock()
            .map_err(|_| Error::Fatal(format!("{}: newest lock poisoned", self.url)))?;
        let trusted = seen.filter(|s| Some(s.version) == t.version() && now - s.at < s.trust);
        if let Some(s) = trusted {
            if run(t.log_store().read_commit_entry(s.version + 1))
                .map_err(delta)?
                .is_none()
            {
                *seen = Some(NewestSeen { at: now, ..s });
                return Ok(t);
            }
        }
        run(t.update_state()).map_err(delta)?;
        let state = t.snapshot().map_err(delta)?;
        *seen = Some(NewestSeen {
            version: state.version(),
            at: now,
            trust: append::trust(state.table_config().log_retention_duration()),
        });
        Ok(t)
    }

    /// Makes commit `version` survive a power cut on a local table: object_store's local
    /// put-if-absent (a staged file linked into `_delta_log`) does not fsync. A bucket's PUT
    /// is durable once it returns.
    pub(crate) fn sync_commit(&self, version: u64) -> Result<(), Error> {
        let Some(dir) = &self.local_dir else {
            return Ok(());
        };
        let log = dir.join("_delta_log");
        fsync(&log.join(format!("{version:020}.json")))?;
        fsync(&log)
    }

    /// Stores a data file at `rel` (not yet part of the table); returns its size.
    pub(crate) fn put(&self, rel: &str, bytes: Vec<u8>) -> Result<u64, Error> {
        let n = bytes.len() as u64;
        match &self.local_dir {
            Some(dir) => write_durably(&dir.join(rel), &bytes)?,
            None => {
                let store = self.lock()?.log_store().object_store(None);
                let path = object_store::path::Path::from(rel);
                run(store.put(&path, bytes.into()))?;
            }
        }
        Ok(n)
    }
}

impl TableHandle {
    /// Deletes the files no version of the last `retention` needs (delta-rs's full vacuum:
    /// files a later commit removed, and files no commit lists, once older than `retention`).
    /// `dry_run`: only lists them.
    pub(crate) fn vacuum(
        &self,
        retention: std::time::Duration,
        dry_run: bool,
    ) -> Result<crate::Vacuumed, Error> {
        let retention = chrono::Duration::from_std(retention)
            .map_err(|e| Error::Config(format!("vacuum retention: {e}")))?;
        let table = self.newest()?.clone();
        let (_, metrics) = run(async {
            table
                .vacuum()
                .with_retention_period(retention)
                // our retention is checked by config (at least an hour), not against the
                // table's 7-day default
                .with_enforce_retention_duration(false)
                .with_mode(deltalake::operations::vacuum::VacuumMode::Full)
                .with_dry_run(dry_run)
                .await
                .map_err(delta)
        })?;
        let mut files = metrics.files_deleted;
        files.sort();
        Ok(crate::Vacuumed { dry_run, files })
    }
}

/// One commit on `t`'s loaded version (delta-rs retries a lost race when the winner's actions
/// do not conflict, e.g. another writer's appends); `t` then holds the committed version.
pub(crate) fn commit(
    t: &mut DeltaTable,
    actions: Vec<Action>,
    op: DeltaOperation,
) -> Result<u64, Error> {
    let log_store = t.log_store();
    let finalized = run(async {
        let snapshot = t.snapshot().map_err(delta)?;
        let interval = snapshot.table_config().checkpoint_interval().get();
        // 1. Checkpoints: every `delta.checkpointInterval` commits (100 by default) the
        //    post-commit hook writes the state as a Parquet checkpoint, so opening the table
        //    (a writer on start, any reader) reads one checkpoint plus at most 99 JSON
        //    commits, not every commit since the table began; txn versions are in it too.
        // 2. Expired JSON commits (older than `delta.logRetentionDuration`, 30 days) are
        //    removed behind a checkpoint, at every tenth checkpoint ([`cleans_up_log`]).
        //    delta-rs's default cleans up after every commit, and its cleanup lists the whole
        //    `_delta_log`: a commit then costs as much as the table has versions (100k
        //    entries listed per flush after 100k commits; hundreds of LIST requests on S3).
        let properties = CommitProperties::default()
            .with_create_checkpoint(true)
            .with_cleanup_expired_logs(Some(cleans_up_log(snapshot.version() + 1, interval)));
        CommitBuilder::from(properties)
            .with_actions(actions)
            .build(Some(snapshot), log_store, op)
            .await
            .map_err(delta)
    })?;
    let version = finalized.version();
    t.state = Some(finalized.snapshot());
    Ok(version)
}

/// Whether the commit of `version` is one after which expired commits are removed: every
/// tenth checkpoint. A cleanup lists the whole `_delta_log` (a local directory lists at
/// about 3 µs per entry: 0.3 s at 100k versions); the commits it removes are a month old,
/// so doing it every 1,000 commits instead of every 100 changes nothing but the cost.
pub(crate) fn cleans_up_log(version: u64, interval: u64) -> bool {
    writes_checkpoint(version, interval.saturating_mul(10))
}

/// Whether the commit of `version` is one after which a checkpoint is written (delta-rs
/// writes one after every version `v` with `(v + 1) % interval == 0`).
pub(crate) fn writes_checkpoint(version: u64, interval: u64) -> bool {
    (version + 1).is_multiple_of(interval)
}

/// Writes `bytes` to `path` so that a reader sees all of it or nothing, and it survives a
/// power cut before the commit that lists it: a temp name in the same directory, fsync,
/// rename, fsync of the directory.
fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io(dir))?;
    // `.`-prefixed: not a data file for any reader listing the directory, and vacuum skips it
    let tmp = dir.join(format!(".tmp-{:016x}", rand::random::<u64>()));
    let mut file = File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(bytes).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(io(path))?;
    fsync(dir)
}

/// fsync of an existing file or directory (a directory's: the names in it).
fn fsync(path: &Path) -> Result<(), Error> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checkpoints after versions 99, 199, … at the default interval; the log is cleaned up
    /// only with every tenth of them, never after every commit: a cleanup lists the whole log.
    #[test]
    fn log_cleanup_goes_with_every_tenth_checkpoint_only() {
        let checkpoints: Vec<u64> = (0..1_000).filter(|v| writes_checkpoint(*v, 100)).collect();
        assert_eq!(
            checkpoints,
            [99, 199, 299, 399, 499, 599, 699, 799, 899, 999]
        );
        assert!(writes_checkpoint(9, 10) && !writes_checkpoint(10, 10));
        let cleanups: Vec<u64> = (0..3_000).filter(|v| cleans_up_log(*v, 100)).collect();
        assert_eq!(cleanups, [999, 1999, 2999]);
    }
}
