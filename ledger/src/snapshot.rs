//! The table at one version, as readers use it: its files (what the Delta log's `add` actions
//! list, nothing else) and where each input partition's rows end. A snapshot never changes:
//! files a later compaction replaces stay readable until vacuum (hours later), and files of
//! flushes that were never committed are not in it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use futures::stream::{self, BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use url::Url;

/// One data file of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableFile {
    /// Relative to the table root, as in the Delta log (`date=…/part-….parquet`).
    pub path: String,
    /// `YYYY-MM-DD`, the file's `date` partition value.
    pub date: String,
    /// The input partition of its rows, and their offset range (inclusive), from its name.
    pub partition: i32,
    pub first: i64,
    pub last: i64,
    /// Size in bytes.
    pub bytes: u64,
    /// When it was written (milliseconds since the epoch).
    pub modified_ms: i64,
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

    /// The URL of the store the table is in (`file:///`, `s3://bucket/`): where a query
    /// engine registers [`Self::listing_store`].
    pub fn store_url(&self) -> Url {
        let mut u = self.table_url.clone();
        u.set_path("/");
        u
    }

    /// The store seen through this snapshot: under the table, listing shows exactly the
    /// snapshot's files (uncommitted and replaced files are not listed); reads, and
    /// everything outside the table, go to the store itself. Registered in a query engine
    /// for [`Self::store_url`], a listing table over [`Self::table_url`] reads this version
    /// of the table and nothing else.
    pub fn listing_store(&self) -> Arc<dyn ObjectStore> {
        let mut files: Vec<ObjectMeta> = self
            .files
            .iter()
            .map(|f| ObjectMeta {
                location: self.location(f),
                last_modified: chrono::DateTime::from_timestamp_millis(f.modified_ms)
                    .unwrap_or_default(),
                size: f.bytes,
                e_tag: None,
                version: None,
            })
            .collect();
        files.sort_by(|a, b| a.location.cmp(&b.location));
        Arc::new(SnapshotStore {
            inner: self.root.clone(),
            prefix: self.prefix.clone(),
            files: Arc::new(files),
        })
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

/// See [`Snapshot::listing_store`].
#[derive(Debug)]
struct SnapshotStore {
    inner: Arc<dyn ObjectStore>,
    prefix: Path,
    /// The snapshot's files, sorted by location.
    files: Arc<Vec<ObjectMeta>>,
}

impl fmt::Display for SnapshotStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Snapshot({}, {} files)", self.inner, self.files.len())
    }
}

impl SnapshotStore {
    /// Whether a listing of `prefix` is within the table (then the snapshot answers it).
    fn in_table(&self, prefix: Option<&Path>) -> bool {
        prefix.is_some_and(|p| p.prefix_matches(&self.prefix))
    }

    fn under<'a>(&'a self, prefix: &'a Path) -> impl Iterator<Item = &'a ObjectMeta> + 'a {
        self.files
            .iter()
            .filter(move |m| m.location.prefix_matches(prefix) && m.location != *prefix)
    }
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
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        if !self.in_table(prefix) {
            return self.inner.list(prefix);
        }
        let prefix = prefix.expect("in the table").clone();
        let found: Vec<_> = self.under(&prefix).cloned().map(Ok).collect();
        stream::iter(found).boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        if !self.in_table(prefix) {
            return self.inner.list_with_delimiter(prefix).await;
        }
        let prefix = prefix.expect("in the table");
        let depth = prefix.parts().count();
        let mut common_prefixes: Vec<Path> = vec![];
        let mut objects = vec![];
        for m in self.under(prefix) {
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
            partition: 0,
            first: 0,
            last: 0,
            bytes: 7,
            modified_ms: 0,
        }
    }

    /// Under the table only the snapshot's files are listed; outside it, the store itself.
    #[tokio::test]
    async fn the_listing_store_lists_exactly_the_snapshot() {
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
            "anomalies/x.parquet",
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
        let store = snap.listing_store();
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
        let other: Path = base
            .parts()
            .chain(Path::from("anomalies").parts())
            .collect();
        let outside: Vec<ObjectMeta> = store.list(Some(&other)).try_collect().await.unwrap();
        assert_eq!(
            names(outside),
            ["x.parquet"],
            "outside the table: the store itself"
        );
        let read = store.get(&snap.location(&snap.files[1])).await.unwrap();
        assert_eq!(read.bytes().await.unwrap().as_ref(), b"parquet");
    }
}
