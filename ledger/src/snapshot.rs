//! The table at one version, as readers use it: its files (what the Delta log's `add` actions
//! list, nothing else) and where each input partition's rows end. A snapshot never changes:
//! files a later compaction replaces stay readable until vacuum (hours later), and files of
//! flushes that were never committed are not in it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use futures::stream::{self, BoxStream, StreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use url::Url;

use crate::Error;

/// One data file of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableFile {
    /// Relative to the table root, as in the Delta log (`date=…/part-….parquet` for a
    /// flush's file, `date=…/merged-….parquet` for a compacted one).
    pub path: String,
    /// `YYYY-MM-DD`, the file's `date` partition value.
    pub date: String,
    /// Per input partition of its rows, their offset range, in partition order: one span for
    /// a flush's file, one per partition for a compacted day (see `files`).
    pub spans: Vec<OffsetSpan>,
    /// Its rows (`numRecords` of its statistics).
    pub rows: u64,
    /// Size in bytes.
    pub bytes: u64,
    /// When it was written (milliseconds since the epoch).
    pub modified_ms: i64,
}

/// Offsets `first..=last` (inclusive) of input partition `partition`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OffsetSpan {
    pub partition: i32,
    pub first: i64,
    pub last: i64,
}

/// The table at one version.
#[derive(Clone)]
pub struct Snapshot {
    /// The Delta version.
    pub version: u64,
    /// Its data files, in path order.
    pub files: Vec<TableFile>,
    /// Per input partition with rows in the table: the offset its rows end before (its txn
    /// version + 1). Every row of partition `p` in the table has `kafka_offset < ends[p]`.
    pub ends: BTreeMap<i32, i64>,
    pub(crate) table_url: Url,
    pub(crate) prefix: Path,
    pub(crate) root: Arc<dyn ObjectStore>,
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("version", &self.version)
            .field("files", &self.files.len())
            .field("ends", &self.ends)
            .field("table_url", &self.table_url.as_str())
            .finish()
    }
}

impl Snapshot {
    /// The table's URL (`file:///…/usage/`, `s3://bucket/prefix/usage/`).
    pub fn table_url(&self) -> &Url {
        &self.table_url
    }

    /// This snapshot's files as a store lists them (see [`listing_store`]).
    pub fn listing(&self) -> Listing {
        Listing::new(
            &self.table_url,
            self.prefix.clone(),
            self.root.clone(),
            self.files
                .iter()
                .map(|f| (f.path.as_str(), f.bytes, f.modified_ms)),
        )
    }

    /// Reads a file of this snapshot whole (files are immutable: what it lists, it can read
    /// until vacuum removes files older than the retention).
    pub fn read(&self, file: &TableFile) -> Result<bytes::Bytes, crate::Error> {
        use object_store::ObjectStoreExt;
        let location = self.location(file);
        let root = self.root.clone();
        Ok(crate::storage::run(async move {
            root.get(&location).await?.bytes().await
        })?)
    }

    /// Where `file` is in the store.
    pub(crate) fn location(&self, file: &TableFile) -> Path {
        self.prefix
            .parts()
            .chain(Path::from(file.path.as_str()).parts())
            .collect()
    }
}

/// A table's files at one version, as a store lists them: see [`listing_store`].
#[derive(Clone)]
pub struct Listing {
    store_url: Url,
    root: Arc<dyn ObjectStore>,
    /// The table's directory in the store.
    prefix: Path,
    /// Its files, sorted by location.
    files: Arc<Vec<ObjectMeta>>,
}

impl Listing {
    /// The table at `table_url` (at `prefix` in `root`) listing exactly `files` (path relative
    /// to the table, size, modification time in ms since the epoch).
    pub(crate) fn new<'a>(
        table_url: &Url,
        prefix: Path,
        root: Arc<dyn ObjectStore>,
        files: impl Iterator<Item = (&'a str, u64, i64)>,
    ) -> Listing {
        let mut metas: Vec<ObjectMeta> = files
            .map(|(path, size, modified_ms)| ObjectMeta {
                location: prefix.parts().chain(Path::from(path).parts()).collect(),
                last_modified: chrono::DateTime::from_timestamp_millis(modified_ms)
                    .unwrap_or_default(),
                size,
                e_tag: None,
                version: None,
            })
            .collect();
        metas.sort_by(|a, b| a.location.cmp(&b.location));
        let mut store_url = table_url.clone();
        store_url.set_path("/");
        Listing {
            store_url,
            root,
            prefix,
            files: Arc::new(metas),
        }
    }
}

/// The store the tables of `listings` are in (`file:///`, `s3://bucket/`), seen through their
/// snapshots: under each table, listing shows exactly its snapshot's files (uncommitted and
/// replaced files are not listed); reads, and everything outside the tables, go to the store
/// itself. Registered in a query engine for the returned URL, listing tables over the tables'
/// URLs read those versions and nothing else. `None` without listings; an error if they are
/// not all in one store.
pub fn listing_store(listings: &[Listing]) -> Result<Option<(Url, Arc<dyn ObjectStore>)>, Error> {
    let Some(first) = listings.first() else {
        return Ok(None);
    };
    if let Some(other) = listings.iter().find(|l| l.store_url != first.store_url) {
        return Err(Error::Config(format!(
            "the ledger's tables are in different stores ({} and {})",
            first.store_url, other.store_url
        )));
    }
    let store = SnapshotStore {
        local: (first.store_url.scheme() == "file").then(LocalFileSystem::new),
        inner: first.root.clone(),
        tables: listings
            .iter()
            .map(|l| (l.prefix.clone(), l.files.clone()))
            .collect(),
    };
    Ok(Some((first.store_url.clone(), Arc::new(store))))
}

/// Range reads of up to this many bytes in all are served in the reading task; larger ones
/// (a finance scan's column chunks, tens of MiB) by the store, on a blocking thread, so that
/// a cold disk does not hold a query worker for long.
const INLINE_READ_BYTES: u64 = 4 << 20;

/// Whether `ranges` of a local file are read in the calling task ([`read_local_ranges`])
/// rather than by the store, on a blocking thread. The query engine asks for the column
/// chunks and pages it decodes this way; object_store's local store sends every call to the
/// runtime's blocking pool (`spawn_blocking`: a hand-off to another thread and back), and a
/// team lead's chargeback over 124 files, many small reads, spent about a third of its time
/// there (median 0.25–0.30 s, 0.17–0.18 s read here, a standalone API over the ledger of
/// `meterline bench api`, 20M rows). A small read of a ledger file is one `pread` from the page
/// cache; the tasks that call this run on the API's query runtime, apart from the HTTP server,
/// as DuckDB's reads run on its query threads.
fn read_inline(ranges: &[std::ops::Range<u64>]) -> bool {
    ranges
        .iter()
        .map(|r| r.end.saturating_sub(r.start))
        .sum::<u64>()
        <= INLINE_READ_BYTES
}

fn read_local_ranges(
    path: &std::path::Path,
    ranges: &[std::ops::Range<u64>],
) -> object_store::Result<Vec<bytes::Bytes>> {
    use std::os::unix::fs::FileExt;
    let failed = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound => object_store::Error::NotFound {
            path: path.display().to_string(),
            source: Box::new(e),
        },
        _ => object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(Error::Io {
                path: path.to_path_buf(),
                source: e,
            }),
        },
    };
    let file = std::fs::File::open(path).map_err(failed)?;
    ranges
        .iter()
        .map(|r| {
            if r.start > r.end {
                return Err(failed(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("range {r:?} ends before it starts"),
                )));
            }
            let mut buf = vec![0u8; (r.end - r.start) as usize];
            file.read_exact_at(&mut buf, r.start).map_err(failed)?;
            Ok(bytes::Bytes::from(buf))
        })
        .collect()
}

/// See [`listing_store`].
#[derive(Debug)]
struct SnapshotStore {
    /// For a table on local disk: where its files are on the filesystem (object_store's
    /// mapping, the one the table's own `file://` store uses: delta-rs builds it as a plain
    /// `LocalFileSystem`). Small range reads of them are served here (see `read_inline`).
    local: Option<LocalFileSystem>,
    inner: Arc<dyn ObjectStore>,
    /// Per table: its directory and its snapshot's files, sorted by location.
    tables: Vec<(Path, Arc<Vec<ObjectMeta>>)>,
}

impl fmt::Display for SnapshotStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Snapshot({}, {} tables)", self.inner, self.tables.len())
    }
}

impl SnapshotStore {
    /// The files of the table a listing of `prefix` is within (then its snapshot answers).
    fn table_of(&self, prefix: Option<&Path>) -> Option<&[ObjectMeta]> {
        let prefix = prefix?;
        self.tables
            .iter()
            .find(|(table, _)| prefix.prefix_matches(table))
            .map(|(_, files)| files.as_slice())
    }
}

/// The files of `files` under `prefix` (not `prefix` itself).
fn under<'a>(
    files: &'a [ObjectMeta],
    prefix: &'a Path,
) -> impl Iterator<Item = &'a ObjectMeta> + 'a {
    files
        .iter()
        .filter(move |m| m.location.prefix_matches(prefix) && m.location != *prefix)
}

#[async_trait::async_trait]
impl ObjectStore for SnapshotStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[std::ops::Range<u64>],
    ) -> object_store::Result<Vec<bytes::Bytes>> {
        match &self.local {
            Some(local) if read_inline(ranges) => {
                read_local_ranges(&local.path_to_filesystem(location)?, ranges)
            }
            _ => self.inner.get_ranges(location, ranges).await,
        }
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let (Some(files), Some(prefix)) = (self.table_of(prefix), prefix) else {
            return self.inner.list(prefix);
        };
        let found: Vec<_> = under(files, prefix).cloned().map(Ok).collect();
        stream::iter(found).boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let (Some(files), Some(prefix)) = (self.table_of(prefix), prefix) else {
            return self.inner.list_with_delimiter(prefix).await;
        };
        let depth = prefix.parts().count();
        let mut common_prefixes: Vec<Path> = vec![];
        let mut objects = vec![];
        for m in under(files, prefix) {
            let parts: Vec<_> = m.location.parts().collect();
            if parts.len() == depth + 1 {
                objects.push(m.clone());
            } else {
                let dir: Path = parts[..=depth].iter().cloned().collect();
                if common_prefixes.last() != Some(&dir) {
                    common_prefixes.push(dir);
                }
            }
        }
        common_prefixes.dedup();
        Ok(ListResult {
            common_prefixes,
            objects,
        })
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;

    fn file(path: &str) -> TableFile {
        TableFile {
            path: path.into(),
            date: path[5..15].into(),
            spans: vec![],
            rows: 1,
            bytes: 7,
            modified_ms: 0,
        }
    }

    /// Under each table only its snapshot's files are listed; outside them, the store itself.
    #[tokio::test]
    async fn the_listing_store_lists_exactly_the_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let root: Arc<dyn ObjectStore> = Arc::new(object_store::local::LocalFileSystem::new());
        let base = Path::from_filesystem_path(dir.path()).unwrap();
        let put = |rel: &str| {
            let p: Path = base.parts().chain(Path::from(rel).parts()).collect();
            let root = root.clone();
            async move {
                root.put(&p, PutPayload::from_static(b"parquet"))
                    .await
                    .unwrap()
            }
        };
        for rel in [
            "usage/date=2026-03-01/a.parquet",
            "usage/date=2026-03-01/orphan.parquet",
            "usage/date=2026-03-02/b.parquet",
            "usage/date=2026-03-03/replaced.parquet",
            "anomalies/date=2026-03-01/x.parquet",
            "anomalies/date=2026-03-01/replaced.parquet",
            "other/y.parquet",
        ] {
            put(rel).await;
        }
        let table: Path = base.parts().chain(Path::from("usage").parts()).collect();
        let snap = Snapshot {
            version: 3,
            files: vec![
                file("date=2026-03-01/a.parquet"),
                file("date=2026-03-02/b.parquet"),
            ],
            ends: BTreeMap::new(),
            table_url: Url::from_directory_path(dir.path().join("usage")).unwrap(),
            prefix: table.clone(),
            root: root.clone(),
        };
        let anomalies: Path = base
            .parts()
            .chain(Path::from("anomalies").parts())
            .collect();
        let anomalies_url = Url::from_directory_path(dir.path().join("anomalies")).unwrap();
        let (url, store) = listing_store(&[
            snap.listing(),
            Listing::new(
                &anomalies_url,
                anomalies.clone(),
                root.clone(),
                [("date=2026-03-01/x.parquet", 7, 0)].into_iter(),
            ),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(url.as_str(), "file:///");
        let names = |v: Vec<ObjectMeta>| -> Vec<String> {
            v.into_iter()
                .map(|m| m.location.filename().unwrap().to_string())
                .collect()
        };
        let all: Vec<ObjectMeta> = store.list(Some(&table)).try_collect().await.unwrap();
        assert_eq!(names(all), ["a.parquet", "b.parquet"]);
        let top = store.list_with_delimiter(Some(&table)).await.unwrap();
        let dirs: Vec<_> = top
            .common_prefixes
            .iter()
            .map(|p| p.filename().unwrap().to_string())
            .collect();
        assert_eq!(dirs, ["date=2026-03-01", "date=2026-03-02"]);
        assert!(top.objects.is_empty());
        let day1 = top.common_prefixes[0].clone();
        let in_day = store.list_with_delimiter(Some(&day1)).await.unwrap();
        assert_eq!(names(in_day.objects), ["a.parquet"]);
        let found: Vec<ObjectMeta> = store.list(Some(&anomalies)).try_collect().await.unwrap();
        assert_eq!(names(found), ["x.parquet"], "the second table's snapshot");
        let other: Path = base.parts().chain(Path::from("other").parts()).collect();
        let outside: Vec<ObjectMeta> = store.list(Some(&other)).try_collect().await.unwrap();
        assert_eq!(
            names(outside),
            ["y.parquet"],
            "outside the tables: the store itself"
        );
        let read = store.get(&snap.location(&snap.files[1])).await.unwrap();
        assert_eq!(read.bytes().await.unwrap().as_ref(), b"parquet");
        // ranges are read in place, the same bytes as the store's own reads
        let b = snap.location(&snap.files[1]);
        let ranges = [0..3, 2..7, 4..4];
        let here = store.get_ranges(&b, &ranges).await.unwrap();
        assert_eq!(here, root.get_ranges(&b, &ranges).await.unwrap());
        assert_eq!(here[1].as_ref(), b"rquet");
        let gone: Path = table
            .parts()
            .chain(Path::from("date=2026-03-09/gone.parquet").parts())
            .collect();
        assert!(
            matches!(
                store.get_ranges(&gone, &[0..1]).await,
                Err(object_store::Error::NotFound { .. })
            ),
            "a file vacuumed under a query is NotFound, as from the store"
        );
        let past_end = store.get_ranges(&b, &[5..9]).await.unwrap_err();
        assert!(
            past_end.to_string().contains("b.parquet"),
            "a short file names itself: {past_end}"
        );
        #[allow(clippy::reversed_empty_ranges)]
        let backwards = store.get_ranges(&b, &[4..2]).await.unwrap_err();
        assert!(backwards.to_string().contains("ends before"), "{backwards}");
        // past INLINE_READ_BYTES the store reads them, the same bytes
        let big: Vec<u8> = (0..INLINE_READ_BYTES + 4096)
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(dir.path().join("usage/date=2026-03-01/a.parquet"), &big).unwrap();
        let a = snap.location(&snap.files[0]);
        let whole = [0..big.len() as u64, 7..9];
        let read = store.get_ranges(&a, &whole).await.unwrap();
        assert_eq!(read[0].as_ref(), &big[..]);
        assert_eq!(read[1].as_ref(), &big[7..9]);
    }
}
