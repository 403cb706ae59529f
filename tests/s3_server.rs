//! The S3 server the ledger's `s3://` tests run against (common::s3, moto) keeps the rule
//! delta-rs's commit on S3 relies on: a `PutMode::Create` (`If-None-Match: *`) of a key that
//! exists fails with `AlreadyExists`, also when writers race for the same key.

mod common;

use std::sync::Arc;

use common::s3::S3Server;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload};

/// An object_store client for `bucket_url`, configured only by the server's `storage_options`.
fn store(s3: &S3Server, bucket_url: &str) -> Arc<dyn ObjectStore> {
    let mut builder = AmazonS3Builder::new().with_url(bucket_url);
    for (key, value) in s3.storage_options() {
        builder = builder.with_config(key.parse().unwrap(), value);
    }
    Arc::new(builder.build().unwrap())
}

#[tokio::test]
async fn create_of_an_existing_key_is_already_exists() {
    let s3 = S3Server::start().unwrap();
    let bucket = s3.create_bucket("meterline-create").unwrap();
    assert_eq!(bucket, "s3://meterline-create");
    let store = store(&s3, &bucket);
    let key = Path::from("usage/_delta_log/00000000000000000000.json");

    store
        .put_opts(
            &key,
            PutPayload::from_static(b"first"),
            PutMode::Create.into(),
        )
        .await
        .unwrap();
    let second = store
        .put_opts(
            &key,
            PutPayload::from_static(b"second"),
            PutMode::Create.into(),
        )
        .await;
    assert!(
        matches!(second, Err(object_store::Error::AlreadyExists { .. })),
        "second create: {second:?} (moto log: {})",
        s3.log_path().display()
    );
    // The first write stays.
    let body = store.get(&key).await.unwrap().bytes().await.unwrap();
    assert_eq!(&body[..], b"first");
    // A plain put still overwrites (the Overwrite mode sends no condition).
    store
        .put(&key, PutPayload::from_static(b"third"))
        .await
        .unwrap();
    let body = store.get(&key).await.unwrap().bytes().await.unwrap();
    assert_eq!(&body[..], b"third");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_of_one_key_have_one_winner() {
    let s3 = S3Server::start().unwrap();
    let bucket = s3.create_bucket("meterline-race").unwrap();
    const WRITERS: usize = 8;
    // One client per writer (its own connections), as writers in separate processes have.
    let stores: Vec<_> = (0..WRITERS).map(|_| store(&s3, &bucket)).collect();
    // Several keys: one round is a weak test of a race.
    for round in 0..20 {
        let key = Path::from(format!("usage/_delta_log/{round:020}.json"));
        let barrier = Arc::new(tokio::sync::Barrier::new(WRITERS));
        let tasks: Vec<_> = (0..WRITERS)
            .map(|writer| {
                let (store, key, barrier) = (stores[writer].clone(), key.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    let body = PutPayload::from(format!("writer {writer}").into_bytes());
                    store.put_opts(&key, body, PutMode::Create.into()).await
                })
            })
            .collect();
        let mut winners = Vec::new();
        for (writer, task) in tasks.into_iter().enumerate() {
            match task.await.unwrap() {
                Ok(_) => winners.push(writer),
                Err(object_store::Error::AlreadyExists { .. }) => {}
                Err(e) => panic!("round {round}, writer {writer}: {e}"),
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "round {round}: winners {winners:?} (moto log: {})",
            s3.log_path().display()
        );
        let body = stores[0].get(&key).await.unwrap().bytes().await.unwrap();
        assert_eq!(body, format!("writer {}", winners[0]).as_bytes());
    }
}

#[tokio::test]
async fn env_reaches_the_same_server() {
    let s3 = S3Server::start().unwrap();
    let bucket = s3.create_bucket("meterline-env").unwrap();
    // Each variable is one of object_store's keys (its `from_env` reads AWS_* this way) with
    // the value of the same key in storage_options.
    let options: Vec<(AmazonS3ConfigKey, String)> = s3
        .storage_options()
        .into_iter()
        .map(|(k, v)| (k.parse().unwrap(), v))
        .collect();
    let mut builder = AmazonS3Builder::new().with_url(&bucket);
    for (name, value) in s3.env() {
        let key: AmazonS3ConfigKey = name.to_ascii_lowercase().parse().unwrap();
        assert!(options.contains(&(key, value.clone())), "{name}={value}");
        builder = builder.with_config(key, value);
    }
    assert_eq!(s3.env().len(), options.len());
    let store = builder.build().unwrap();
    let key = Path::from("probe");
    store
        .put(&key, PutPayload::from_static(b"via env"))
        .await
        .unwrap();
    let body = store.get(&key).await.unwrap().bytes().await.unwrap();
    assert_eq!(&body[..], b"via env");
    assert!(
        s3.create_bucket("x").is_err(),
        "an invalid bucket name is refused"
    );
}
