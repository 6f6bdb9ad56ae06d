//! a05: every error a caller may want to handle is matched by its variant, never by
//! its message. None of these needs an apiserver: the clients point at a port where
//! nothing listens, and nothing here talks to it.

use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use multicluster_runtime::cache::{CacheError, FieldIndex};
use multicluster_runtime::providers::clusters::Clusters;
use multicluster_runtime::{Cluster, ClusterName, Error, Manager, Provider};
use tokio_util::sync::CancellationToken;

fn cluster(name: &str) -> Arc<Cluster> {
    let config = kube::Config::new("https://127.0.0.1:9".parse().expect("a URL"));
    Arc::new(Cluster::new(
        name,
        kube::Client::try_from(config).expect("a client"),
    ))
}

fn index() -> FieldIndex {
    FieldIndex::new::<ConfigMap>("by-data", |cm: &ConfigMap| {
        cm.data.iter().flatten().map(|(k, _)| k.clone()).collect()
    })
}

#[tokio::test]
async fn a05_a_manager_started_twice_is_already_started() {
    let manager = Manager::new(cluster(""));
    // Cancelled from the start: the start that runs returns at once.
    let token = CancellationToken::new();
    token.cancel();
    let (first, second) = tokio::join!(manager.start(token.clone()), manager.start(token.clone()));
    let refused = [&first, &second]
        .iter()
        .filter(|r| matches!(r, Err(Error::AlreadyStarted)))
        .count();
    assert_eq!(refused, 1, "first: {first:?}, second: {second:?}");
    // Also after it has stopped: a manager runs once.
    let again = manager.start(token).await;
    assert!(matches!(again, Err(Error::AlreadyStarted)), "{again:?}");
}

#[tokio::test]
async fn a05_adding_a_taken_name_is_cluster_exists_with_the_name() {
    let provider = Clusters::new();
    provider.add(cluster("eu-1")).await.expect("first add");
    match provider.add(cluster("eu-1")).await {
        Err(Error::ClusterExists { cluster }) => assert_eq!(cluster, "eu-1"),
        other => panic!("expected ClusterExists, got {other:?}"),
    }
    // Replacing is the way to swap it.
    provider.replace(cluster("eu-1")).await.expect("replace");
}

#[tokio::test]
async fn a05_a_built_cluster_with_another_name_is_a_name_mismatch_and_not_registered() {
    let provider = Clusters::new();
    let result = provider
        .replace_if_changed("eu-1", 7, async || Ok(cluster("us-1")))
        .await;
    match result {
        Err(Error::ClusterNameMismatch { expected, actual }) => {
            assert_eq!((expected.as_str(), actual.as_str()), ("eu-1", "us-1"));
        }
        other => panic!("expected ClusterNameMismatch, got {other:?}"),
    }
    assert!(provider.names().is_empty());
    let built = provider
        .replace_if_changed("eu-1", 7, async || Ok(cluster("eu-1")))
        .await;
    assert!(matches!(built, Ok(true)), "{built:?}");
}

#[tokio::test]
async fn a05_an_unknown_cluster_is_cluster_not_found() {
    let provider = Arc::new(Clusters::new());
    let manager = Manager::with_provider(cluster(""), provider.clone());
    let unknown = ClusterName::from("nowhere");
    let from_manager = manager.get_cluster(&unknown).await.expect_err("unknown");
    assert!(matches!(&from_manager, Error::ClusterNotFound(name) if *name == unknown));
    assert!(from_manager.is_cluster_not_found());
    let from_provider = provider.get(&unknown).await.expect_err("unknown");
    assert!(from_provider.is_cluster_not_found());
}

#[tokio::test]
async fn a05_an_index_registered_twice_is_index_exists() {
    let manager = Manager::new(cluster(""));
    manager.index_field(index()).await.expect("first index");
    match manager.index_field(index()).await {
        Err(Error::Cache(CacheError::IndexExists { .. })) => {}
        other => panic!("expected IndexExists, got {other:?}"),
    }
}

#[test]
fn a05_wrapped_errors_keep_their_source() {
    use std::error::Error as _;
    let cause = std::io::Error::other("connection refused");
    let error = Error::Provider {
        provider: "secret".into(),
        source: Box::new(cause),
    };
    let source = error.source().expect("a source");
    assert!(source.downcast_ref::<std::io::Error>().is_some());
}
