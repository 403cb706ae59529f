//! The closed months on disk: `<data_dir>/closes/YYYY-MM/`, every report file of the month
//! (3 groupings × JSON, CSV, FOCUS) read-only, and a `manifest.json` with their SHA-256, the
//! watermark the month was closed at, who closed it and when. A month is closed exactly when
//! its directory exists; it is never rewritten. This is the store only: what goes in a close
//! is decided by `close.rs`, and the chargeback reads closed months from here.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ledger_view::Watermark;
use crate::period::Month;
use crate::Error;

/// One snapshot file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SnapshotFile {
    pub name: String,
    pub sha256: String,
    pub bytes: u64,
}

/// `manifest.json` of a closed month.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CloseRecord {
    #[schema(value_type = String)]
    pub period: Month,
    pub closed_at: String,
    pub closed_by: String,
    /// The month closed before this one, whose late usage this snapshot bills as adjustments.
    #[schema(value_type = Option<String>)]
    pub previous: Option<Month>,
    /// Per input partition, the ledger offset the snapshot's rows end before.
    #[schema(value_type = Object)]
    pub watermark: Watermark,
    /// The version of the ledger's Delta table the close read. The table at this version is
    /// exactly what the statement bills (its txn versions are `watermark`); rows committed
    /// after it, at or past the watermark, are late usage billed by the next close. (`None`
    /// in closes written before the ledger was a Delta table.)
    #[serde(default)]
    pub delta_version: Option<u64>,
    pub files: Vec<SnapshotFile>,
}

pub const MANIFEST: &str = "manifest.json";

/// The closes under a data directory.
pub struct Closes {
    dir: PathBuf,
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn fsync_dir(p: &Path) -> Result<(), Error> {
    fs::File::open(p)
        .and_then(|d| d.sync_all())
        .map_err(Error::at(p))
}

impl Closes {
    pub fn new(data_dir: &Path) -> Closes {
        Closes {
            dir: data_dir.join("closes"),
        }
    }

    /// The record of `period`, if closed.
    pub fn record(&self, period: Month) -> Result<Option<CloseRecord>, Error> {
        let p = self.dir.join(period.to_string()).join(MANIFEST);
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|source| Error::Manifest { path: p, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::at(&p)(e)),
        }
    }

    /// Every closed month, oldest first.
    pub fn list(&self) -> Result<Vec<CloseRecord>, Error> {
        let mut months: Vec<Month> = match fs::read_dir(&self.dir) {
            Ok(d) => d
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![],
            Err(e) => return Err(Error::at(&self.dir)(e)),
        };
        months.sort();
        let mut out = vec![];
        for m in months {
            if let Some(r) = self.record(m)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    pub fn last(&self) -> Result<Option<CloseRecord>, Error> {
        Ok(self.list()?.pop())
    }

    /// A snapshot file's bytes, checked against the manifest (a changed file is an error,
    /// never an answer).
    pub fn read(&self, rec: &CloseRecord, name: &str) -> Result<Vec<u8>, Error> {
        let snapshot = self.dir.join(rec.period.to_string());
        let f = rec
            .files
            .iter()
            .find(|f| f.name == name)
            .ok_or_else(|| Error::Corrupt {
                path: snapshot.join(MANIFEST),
                reason: format!("lists no {name}"),
            })?;
        let p = snapshot.join(name);
        let b = fs::read(&p).map_err(Error::at(&p))?;
        if sha256_hex(&b) != f.sha256 {
            return Err(Error::Corrupt {
                path: p,
                reason: "does not match its manifest digest: the closed snapshot was altered"
                    .into(),
            });
        }
        Ok(b)
    }

    /// Writes a snapshot. Ordering matters: a reader must never see a half-written close.
    pub fn write(
        &self,
        mut rec: CloseRecord,
        files: Vec<(String, Vec<u8>)>,
    ) -> Result<CloseRecord, Error> {
        fs::create_dir_all(&self.dir).map_err(Error::at(&self.dir))?;
        let staging = self.dir.join(format!(".tmp-{}", rec.period));
        let _ = fs::remove_dir_all(&staging);
        fs::create_dir_all(&staging).map_err(Error::at(&staging))?;
        // 1. every report file, fsynced, digests into the record
        for (name, bytes) in &files {
            let p = staging.join(name);
            let mut f = fs::File::create(&p).map_err(Error::at(&p))?;
            f.write_all(bytes).map_err(Error::at(&p))?;
            f.sync_all().map_err(Error::at(&p))?;
            rec.files.push(SnapshotFile {
                name: name.clone(),
                sha256: sha256_hex(bytes),
                bytes: bytes.len() as u64,
            });
        }
        // 2. the manifest last
        let p = staging.join(MANIFEST);
        let manifest = serde_json::to_vec_pretty(&rec).map_err(|source| Error::Manifest {
            path: p.clone(),
            source,
        })?;
        let mut f = fs::File::create(&p).map_err(Error::at(&p))?;
        f.write_all(&manifest).map_err(Error::at(&p))?;
        f.sync_all().map_err(Error::at(&p))?;
        fsync_dir(&staging)?;
        // 3. read-only, then one rename publishes the whole close
        for name in files.iter().map(|f| f.0.as_str()).chain([MANIFEST]) {
            let p = staging.join(name);
            let mut perm = fs::metadata(&p).map_err(Error::at(&p))?.permissions();
            perm.set_readonly(true);
            fs::set_permissions(&p, perm).map_err(Error::at(&p))?;
        }
        fs::rename(&staging, self.dir.join(rec.period.to_string())).map_err(Error::at(&staging))?;
        fsync_dir(&self.dir)?;
        Ok(rec)
    }
}
