//! Objects the tests make on an apiserver, built the same way everywhere.

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, PostParams};
use kube::{Client, Resource, ResourceExt};

/// Creates the namespace `name`.
pub async fn create_namespace(client: &Client, name: &str) -> Namespace {
    create_labelled_namespace(client, name, &[]).await
}

/// Creates the namespace `name` with `labels`.
pub async fn create_labelled_namespace(client: &Client, name: &str, labels: &[(&str, &str)]) -> Namespace {
    let mut namespace = Namespace::default();
    namespace.metadata.name = Some(name.to_owned());
    if !labels.is_empty() {
        let labels = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()));
        namespace.metadata.labels = Some(labels.collect());
    }
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .expect("create namespace")
}

/// A reference that makes `owner` the controller of the object carrying it.
pub fn controlled_by<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.name_any(),
        uid: owner.uid().expect("the owner has a uid"),
        controller: Some(true),
        block_owner_deletion: None,
    }
}
