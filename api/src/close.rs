//! Period close: an immutable, hashed snapshot of a month's chargeback under
//! `<data_dir>/closes/YYYY-MM/`: every report file (3 groupings × JSON, CSV, FOCUS) and a
//! `manifest.json` with their SHA-256, the watermark the month was closed at, who closed it
//! and when. A month is closed exactly when its directory exists; it is never rewritten
//! (reopening is not offered: a correction is an adjustment in the next open month).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::catalog::Scope;
use crate::ledger_view::Watermark;
use crate::period::Month;
use crate::reports::chargeback::{self, Cut, GroupBy, ReportFormat};
use crate::{error, Caller, Error, Shared};

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

/// Closes `period` for `author`: refuses what would break the order of closes, then writes
/// the snapshot.
pub async fn close(
    s: &Shared,
    period: Month,
    author: &str,
) -> Result<CloseRecord, (StatusCode, String)> {
    let internal = |e: Error| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    // one close at a time: two would both pass the order check
    let _guard = s.close_lock.lock().await;
    let closes = Closes::new(&s.cfg.data_dir);
    if closes.record(period).map_err(internal)?.is_some() {
        return Err((StatusCode::CONFLICT, format!("{period} is already closed")));
    }
    if period.end() > Utc::now() {
        return Err((
            StatusCode::CONFLICT,
            format!(
                "{period} has not ended yet (it ends {})",
                period.end().to_rfc3339()
            ),
        ));
    }
    let last = closes.last().map_err(internal)?;
    // 1. the ledger as it is now: its complete rows are what the snapshot holds
    let state = s
        .ledger
        .settled_state(&s.cfg.data_dir)
        .await
        .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    // 2. the first close: not before the ledger's first usage (a month before it has nothing
    //    to bill, and closing it would make every month up to the first usage close first)
    if last.is_none() {
        let first = state.files.iter().map(|f| f.date.as_str()).min();
        let Some(first) = first
            .and_then(|d| d.get(..7))
            .and_then(|m| m.parse::<Month>().ok())
        else {
            return Err((
                StatusCode::CONFLICT,
                "the ledger has no usage yet: there is no month to close".into(),
            ));
        };
        if period < first {
            return Err((
                StatusCode::CONFLICT,
                format!("the ledger's first usage is in {first}: {period} has nothing to close"),
            ));
        }
    }
    // 3. months close in order, with no gap and nothing earlier left open
    match &last {
        Some(l) if period < l.period => {
            return Err((
                StatusCode::CONFLICT,
                format!("{period} precedes the last closed month {}", l.period),
            ))
        }
        Some(l) if period != l.period.next() => {
            return Err((
                StatusCode::CONFLICT,
                format!("close {} first (months close in order)", l.period.next()),
            ))
        }
        Some(_) => {}
        None => {
            // nothing earlier may stay open: its usage would never be billed
            let (from, _) = period.date_bounds();
            let first = state
                .files
                .iter()
                .map(|f| &f.date)
                .filter(|d| **d < from)
                .min();
            if let Some(first) = first {
                return Err((
                    StatusCode::CONFLICT,
                    format!(
                        "the ledger has usage from {first}: close {} first",
                        &first[..7]
                    ),
                ));
            }
        }
    }
    // 4. every report of the month under the watermark, as it will be served forever
    let closed_at = Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let cut = Cut {
        upto: Some(state.watermark.clone()),
        adjustments_after: last.as_ref().map(|l| l.watermark.clone()),
    };
    let mut files = vec![];
    for by in GroupBy::ALL {
        let mut c = if s.cfg.rollups {
            chargeback::compute(&s.rollups, &state, period, by, &cut).await
        } else {
            let ctx = crate::catalog::session(&s.cfg, &Scope::All, &state, s.budget_batch())
                .await
                .map_err(internal)?;
            chargeback::compute_sql(&ctx, period, by, &cut).await
        }
        .map_err(internal)?;
        c.status = "closed".into();
        c.closed_at = Some(closed_at.clone());
        c.closed_by = Some(author.to_string());
        for f in ReportFormat::ALL {
            let bytes = chargeback::render(&c, f, &s.cfg.invoice_issuer).map_err(internal)?;
            files.push((f.file_name(by), bytes));
        }
    }
    let rec = CloseRecord {
        period,
        closed_at,
        closed_by: author.to_string(),
        previous: last.map(|l| l.period),
        watermark: state.watermark,
        files: vec![],
    };
    // 5. written atomically (see Closes::write)
    let rec = tokio::task::spawn_blocking(move || closes.write(rec, files))
        .await
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(internal)?;
    tracing::info!(period = %rec.period, by = %rec.closed_by, "period closed");
    Ok(rec)
}

/// Closes a month.
#[utoipa::path(post, path = "/v1/periods/{period}/close",
    params(("period" = String, Path, description = "YYYY-MM")),
    description = "Roles: admin, finance. Writes the month's immutable chargeback snapshot; later usage of it is billed as adjustments in the next month.",
    responses((status = 201, body = CloseRecord), (status = 400), (status = 401), (status = 403), (status = 409)),
    security(("bearer" = [])))]
pub async fn post_close(
    State(s): State<std::sync::Arc<Shared>>,
    Extension(Caller(who)): Extension<Caller>,
    UrlPath(period): UrlPath<String>,
) -> Response {
    let period: Month = match period.parse() {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("period: {e}")),
    };
    // the month's chargebacks are computed on the query runtime, like every query
    let task = {
        let s = s.clone();
        async move { close(&s, period, &who.name).await }
    };
    match s.queries.run(task).await {
        Ok(Ok(rec)) => (StatusCode::CREATED, Json(rec)).into_response(),
        Ok(Err((status, msg))) => error(status, msg),
        Err(e) => e.into_response(),
    }
}

/// Closed months.
#[utoipa::path(get, path = "/v1/periods",
    description = "Roles: admin, finance, viewer.",
    responses((status = 200, body = Vec<CloseRecord>), (status = 401), (status = 403)),
    security(("bearer" = [])))]
pub async fn get_periods(State(s): State<std::sync::Arc<Shared>>) -> Response {
    match Closes::new(&s.cfg.data_dir).list() {
        Ok(l) => Json(l).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
