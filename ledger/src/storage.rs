//! Where a table lives: a URL (a local directory or an object store), opened with delta-rs.
//!
//! delta-rs's own S3/GCS/Azure integrations bring the AWS SDK (DynamoDB locking) and friends;
//! we need none of that: every store we support has an atomic put-if-absent, which is all a
//! Delta commit needs (`_delta_log/<version>.json` written with `If-None-Match: *` on S3,
//! generation preconditions on GCS, `If-None-Match` on Azure). So the `object_store` crate's
//! stores are registered with delta-rs for those schemes, with its default log store (commit
//! = put-if-absent). A bucket that ignores the precondition (a few old S3-compatible servers)
//! would let two writers commit the same version: it is not supported.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Once};

use deltalake::logstore::{
    default_logstore, logstore_factories, object_store_factories, LogStore, LogStoreFactory,
    ObjectStoreFactory, ObjectStoreRef, StorageConfig,
};
use deltalake::{DeltaResult, DeltaTable, DeltaTableBuilder};
use url::Url;

use crate::{delta, io, Error, LedgerConfig};

/// The cloud schemes, with the store they are served by.
const CLOUD_SCHEMES: [&str; 6] = ["s3", "s3a", "gs", "az", "abfs", "abfss"];

/// The URL of table `name` (`usage`, …) under `cfg.url`, or under `data_dir` when it is empty.
/// A local directory is created (delta-rs wants it to exist) and made absolute.
pub(crate) fn table_url(cfg: &LedgerConfig, data_dir: &Path, name: &str) -> Result<Url, Error> {
    let root = cfg.url.trim();
    if root.contains("://") && !root.starts_with("file://") {
        let mut url =
            Url::parse(root).map_err(|e| Error::Config(format!("ledger.url {root:?}: {e}")))?;
        let path = format!("{}/{name}/", url.path().trim_end_matches('/'));
        url.set_path(&path);
        return Ok(url);
    }
    let dir = match root.strip_prefix("file://") {
        Some(p) => std::path::PathBuf::from(p),
        None if root.is_empty() => data_dir.to_path_buf(),
        None => std::path::PathBuf::from(root),
    }
    .join(name);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let dir = std::fs::canonicalize(&dir).map_err(io(&dir))?;
    Url::from_directory_path(&dir)
        .map_err(|()| Error::Config(format!("{} is not a usable directory", dir.display())))
}

/// Refuses options the store of `url` does not know (a misspelt key would otherwise be
/// ignored and the store silently configured from the environment alone).
pub(crate) fn check_options(url: &str, options: &BTreeMap<String, String>) -> Result<(), Error> {
    let scheme = url.split_once("://").map_or("file", |(s, _)| s);
    for key in options.keys() {
        let k = key.to_ascii_lowercase();
        let known = match scheme {
            "s3" | "s3a" => k.parse::<object_store::aws::AmazonS3ConfigKey>().is_ok(),
            "gs" => k.parse::<object_store::gcp::GoogleConfigKey>().is_ok(),
            "az" | "abfs" | "abfss" => k.parse::<object_store::azure::AzureConfigKey>().is_ok(),
            _ => false,
        } || k.parse::<object_store::ClientConfigKey>().is_ok();
        if !known {
            return Err(Error::Config(format!(
                "ledger.storage.{key}: not an option of the {scheme}:// store"
            )));
        }
    }
    Ok(())
}

/// `object_store`'s own store for a cloud URL, rooted at the bucket: configured from the
/// environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`: credentials, endpoint, region), then from
/// `[ledger] storage`, which wins.
struct CloudStores;

impl ObjectStoreFactory for CloudStores {
    fn parse_url_opts(
        &self,
        url: &Url,
        config: &StorageConfig,
    ) -> DeltaResult<(ObjectStoreRef, object_store::path::Path)> {
        use object_store::aws::AmazonS3Builder;
        use object_store::azure::MicrosoftAzureBuilder;
        use object_store::gcp::GoogleCloudStorageBuilder;
        let opts = || config.raw.iter().map(|(k, v)| (k.to_ascii_lowercase(), v));
        let store: ObjectStoreRef = match url.scheme() {
            "s3" | "s3a" => Arc::new(
                opts()
                    .fold(
                        AmazonS3Builder::from_env().with_url(url.as_str()),
                        |b, (k, v)| match k.parse() {
                            Ok(k) => b.with_config(k, v),
                            Err(_) => b,
                        },
                    )
                    .build()?,
            ),
            "gs" => Arc::new(
                opts()
                    .fold(
                        GoogleCloudStorageBuilder::from_env().with_url(url.as_str()),
                        |b, (k, v)| match k.parse() {
                            Ok(k) => b.with_config(k, v),
                            Err(_) => b,
                        },
                    )
                    .build()?,
            ),
            _ => Arc::new(
                opts()
                    .fold(
                        MicrosoftAzureBuilder::from_env().with_url(url.as_str()),
                        |b, (k, v)| match k.parse() {
                            Ok(k) => b.with_config(k, v),
                            Err(_) => b,
                        },
                    )
                    .build()?,
            ),
        };
        let path = object_store::path::Path::from_url_path(url.path())?;
        Ok((store, path))
    }
}

/// Delta's default log store: a commit is a put-if-absent of the next version's file.
struct PutIfAbsentLog;

impl LogStoreFactory for PutIfAbsentLog {
    fn with_options(
        &self,
        prefixed_store: ObjectStoreRef,
        root_store: ObjectStoreRef,
        location: &Url,
        options: &StorageConfig,
    ) -> DeltaResult<Arc<dyn LogStore>> {
        Ok(default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
    }
}

fn register_cloud_stores() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for scheme in CLOUD_SCHEMES {
            let url = Url::parse(&format!("{scheme}://")).expect("a scheme URL");
            object_store_factories().insert(url.clone(), Arc::new(CloudStores));
            logstore_factories().insert(url, Arc::new(PutIfAbsentLog));
        }
    });
}

/// The table at `url`, loaded at its newest version; `None` for the version if there is no
/// table there yet.
pub(crate) fn open_table(
    url: &Url,
    options: &BTreeMap<String, String>,
) -> Result<DeltaTable, Error> {
    register_cloud_stores();
    let options = options
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut table = DeltaTableBuilder::from_url(url.clone())
        .map_err(delta)?
        .with_storage_options(options)
        .build()
        .map_err(delta)?;
    run(async {
        match table.load().await {
            Ok(()) => Ok(()),
            Err(deltalake::DeltaTableError::NotATable(_)) => Ok(()),
            Err(e) => Err(delta(e)),
        }
    })?;
    Ok(table)
}

/// The runtime delta-rs's and the stores' I/O runs on: one for the process, never dropped (a
/// runtime may not be dropped inside another one, and the ledger's callers may be in one).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ledger-io")
            .enable_all()
            .build()
            .expect("a tokio runtime for the ledger's I/O")
    })
}

/// Runs `f` to completion on the ledger's runtime from a thread of its own: callers may be
/// inside another runtime (an async test, a handler), where blocking their thread on a
/// runtime would panic.
pub(crate) fn run<F>(f: F) -> F::Output
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| runtime().block_on(f))
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}
