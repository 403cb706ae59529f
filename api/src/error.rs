//! The crate's one error type and how an error answers over HTTP.

use std::path::PathBuf;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// Errors of the API crate.
///
/// What a caller reads is [`Error::public_message`] (see [`Error::status`] for the code): the
/// `Display` text without any path. Every caller, team leads included, can meet the errors of
/// a query's session (reading the ledger's directories and files), so the paths variants
/// carry (`Io`, `LedgerFile`, `Manifest`, `Corrupt`, the ledger's own) are for
/// the log only.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config: {0}")]
    Config(String),
    /// The API could not listen on `[api] listen`.
    #[error("bind {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// The HTTP server stopped on an error.
    #[error("serving: {0}")]
    Serve(#[source] std::io::Error),
    /// The query runtime's threads could not be started.
    #[error("query runtime: {0}")]
    QueryRuntime(#[source] std::io::Error),
    /// A file system call on `path` failed (a close's snapshot, a ledger file for a rollup).
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A ledger file's flushes could not be read (`meterline-ledger`).
    #[error(transparent)]
    Ledger(#[from] meterline_ledger::Error),
    /// A ledger file whose rows could not be summed into a rollup: what failed in it.
    #[error("{path}: {source}")]
    LedgerFile {
        path: String,
        #[source]
        source: Box<Error>,
    },
    /// Reading Parquet (a ledger file for a rollup; [`Error::LedgerFile`] names it).
    #[error("parquet: {0}")]
    Parquet(#[source] datafusion::parquet::errors::ParquetError),
    /// A ledger file's schema lacks a rollup's column ([`Error::LedgerFile`] names it). Not
    /// `From`: an Arrow error in a query is the caller's (`Query`, 422).
    #[error("arrow: {0}")]
    Arrow(#[source] datafusion::arrow::error::ArrowError),
    /// A close's manifest could not be read or written as JSON.
    #[error("{}: {source}", path.display())]
    Manifest {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A closed snapshot that does not match its manifest: altered, never an answer.
    #[error("{}: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    /// Writing a CSV report.
    #[error("csv: {0}")]
    Csv(#[from] csv::Error),
    #[error("query: {0}")]
    Query(String),
    /// Reading the budget topics (the follower, `meterline-runtime`).
    #[error(transparent)]
    Kafka(#[from] meterline_runtime::Error),
    /// Budget definitions read from their topic (`meterline-reference`).
    #[error(transparent)]
    Reference(#[from] meterline_reference::Error),
    /// The refresh task itself failed (a panic in it).
    #[error("budget refresh task: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The ledger is mid-change (a compaction); retry shortly.
    #[error("busy: {0}")]
    Busy(String),
    /// A bug or a panic; the log has the details.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Query(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Kafka(_) | Error::Reference(_) => StatusCode::BAD_GATEWAY,
            Error::Task(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Error::Config(_)
            | Error::Bind { .. }
            | Error::Serve(_)
            | Error::QueryRuntime(_)
            | Error::Io { .. }
            | Error::Ledger(_)
            | Error::LedgerFile { .. }
            | Error::Parquet(_)
            | Error::Arrow(_)
            | Error::Manifest { .. }
            | Error::Corrupt { .. }
            | Error::Csv(_)
            | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn query(e: impl std::fmt::Display) -> Error {
        Error::Query(e.to_string())
    }

    /// `map_err` for a file system call on `path`.
    pub(crate) fn at(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// The status and message a caller gets; an internal error is logged in full first (with
    /// the paths its message leaves out).
    pub(crate) fn reply(&self) -> (StatusCode, String) {
        let status = self.status();
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = ?self, "request failed");
        }
        (status, self.public_message())
    }

    /// What a caller reads: the `Display` text without any file system path. Any caller, team
    /// leads included, can meet a ledger error, and a ledger file's path names a date and an
    /// offset range (other teams' volume) and the server's layout; so no variant that carries
    /// a path shows it, and errors of `meterline-ledger` are shown by kind.
    pub(crate) fn public_message(&self) -> String {
        match self {
            Error::Io { source, .. } => format!("a file could not be read or written: {source}"),
            Error::Ledger(e) => ledger_message(e),
            Error::LedgerFile { source, .. } => {
                format!(
                    "a ledger file could not be read: {}",
                    source.public_message()
                )
            }
            Error::Manifest { source, .. } => {
                format!("a close's manifest could not be read: {source}")
            }
            Error::Corrupt { reason, .. } => format!("closed snapshot {reason}"),
            _ => self.to_string(),
        }
    }
}

/// A `meterline-ledger` error without the path its variants carry.
fn ledger_message(e: &meterline_ledger::Error) -> String {
    use meterline_ledger::Error as L;
    match e {
        L::Io { source, .. } => format!("a ledger file could not be read: {source}"),
        L::Corrupt { .. } => "a ledger file is unreadable (not the ledger's Parquet); \
                              the server log names it"
            .to_string(),
        L::Fatal(_) => "the ledger is in a state it cannot be read in; the server log has \
                        the details"
            .to_string(),
        // object store and Delta log errors name the objects they were about
        L::Store(_) | L::Delta(_) => {
            "the ledger's storage could not be read; the server log has the details".to_string()
        }
        L::Config(_) | L::Fenced { .. } => {
            "the ledger is not usable as configured; the server log has the details".to_string()
        }
        L::Parquet(_) | L::Arrow(_) | L::Json(_) | L::Money(_) => e.to_string(),
        #[allow(unreachable_patterns)]
        _ => "the ledger could not be read; the server log has the details".to_string(),
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, msg) = self.reply();
        error(status, msg)
    }
}

pub(crate) fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({"error": msg.into()}))).into_response()
}

#[cfg(test)]
mod tests {
    use super::Error;
    use axum::http::StatusCode;

    /// A query's session lists the ledger for every caller, team leads included: a failure
    /// there answers 500 without naming the data directory.
    #[test]
    fn an_unreadable_ledger_directory_names_no_path() {
        use std::error::Error as _;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("usage"), b"not a directory").unwrap();
        let e = crate::ledger_view::LedgerView::open(
            &meterline_ledger::LedgerConfig::default(),
            dir.path(),
        )
        .err()
        .expect("no table where a file is");
        assert!(matches!(e, Error::Ledger(_)), "{e:?}");
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let (_, shown) = e.reply();
        let root = dir.path().display().to_string();
        assert!(!shown.contains(&root), "{shown}");
        assert!(e.source().is_some());
    }

    /// No error a caller reads names a file: a ledger file's path tells a date and an offset
    /// range of someone's rows. Every variant that carries a path, built with one, and the
    /// ledger's own errors through a real unreadable file.
    #[test]
    fn no_answer_names_a_path() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir
            .path()
            .join("usage/date=2026-11-30/part-3-1200-1450.parquet");
        std::fs::create_dir_all(secret.parent().unwrap()).unwrap();
        std::fs::write(&secret, b"not parquet").unwrap();
        let io = || std::io::Error::other("disk on fire");
        let unreadable = meterline_ledger::Error::Corrupt {
            path: "date=2026-11-30/part-3-1200-1450-ab.parquet".into(),
            reason: "not parquet".into(),
        };
        // the store's own error for a file a snapshot lists but storage lacks
        let ledger = meterline_ledger::Ledger::open(
            &meterline_ledger::LedgerConfig::default(),
            &dir.path().join("data"),
        )
        .unwrap();
        let missing = ledger
            .snapshot()
            .unwrap()
            .read(&meterline_ledger::TableFile {
                path: "date=2026-11-30/part-3-1200-1450-ab.parquet".into(),
                date: "2026-11-30".into(),
                spans: vec![meterline_ledger::OffsetSpan {
                    partition: 3,
                    first: 1200,
                    last: 1450,
                }],
                rows: 1,
                bytes: 11,
                modified_ms: 0,
            })
            .unwrap_err();
        assert!(
            matches!(missing, meterline_ledger::Error::Store(_)),
            "{missing:?}"
        );
        let errors = [
            Error::Io {
                path: secret.clone(),
                source: io(),
            },
            Error::Ledger(unreadable),
            Error::Ledger(missing),
            Error::LedgerFile {
                path: secret.display().to_string(),
                source: Box::new(Error::Io {
                    path: secret.clone(),
                    source: io(),
                }),
            },
            Error::Manifest {
                path: secret.clone(),
                source: serde_json::from_str::<u8>("x").unwrap_err(),
            },
            Error::Corrupt {
                path: secret.clone(),
                reason: "altered".into(),
            },
        ];
        for e in &errors {
            assert!(
                format!("{e:?}").contains("part-3"),
                "the log keeps it: {e:?}"
            );
            let (_, shown) = e.reply();
            for leak in [
                "part-3",
                "1200",
                "date=",
                "/tmp",
                &dir.path().display().to_string(),
            ] {
                assert!(!shown.contains(leak), "{leak} in {shown:?} ({e:?})");
            }
        }
    }

    /// A closed snapshot altered on disk is an error naming the file, not an answer.
    #[test]
    fn an_altered_snapshot_is_corrupt() {
        use crate::closes::{CloseRecord, Closes};
        let dir = tempfile::tempdir().unwrap();
        let closes = Closes::new(dir.path());
        let rec: CloseRecord = serde_json::from_value(serde_json::json!({
            "period": "2026-01", "closed_at": "2026-02-01T00:00:00Z", "closed_by": "f",
            "previous": null, "watermark": {}, "files": []
        }))
        .unwrap();
        let rec = closes
            .write(rec, vec![("a.json".into(), b"{}".to_vec())])
            .unwrap();
        assert_eq!(closes.read(&rec, "a.json").unwrap(), b"{}");
        let f = dir.path().join("closes/2026-01/a.json");
        let mut perm = std::fs::metadata(&f).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perm.set_readonly(false);
        std::fs::set_permissions(&f, perm).unwrap();
        std::fs::write(&f, b"[]").unwrap();
        let e = closes.read(&rec, "a.json").unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }), "{e:?}");
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(e.to_string().contains("altered"), "{e}");
        let e = closes.read(&rec, "b.json").unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }), "{e:?}");
    }
}
