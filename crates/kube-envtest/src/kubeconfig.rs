//! Kubeconfigs for the clusters and users of a local fleet.

use std::path::Path;

use kube::config::{
    AuthInfo, Cluster, Context, KubeConfigOptions, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext,
};

use crate::certs::CertAndKey;
use crate::error::{Error, Result};

/// A kubeconfig with one cluster, one user and one context, all named after the
/// cluster (and the user), and the context current.
pub(crate) fn for_user(
    cluster: &str,
    server: &str,
    ca_pem: &str,
    user: &str,
    credentials: &CertAndKey,
) -> Kubeconfig {
    let context = if user == crate::cluster::ADMIN_USER {
        cluster.to_owned()
    } else {
        format!("{user}@{cluster}")
    };
    Kubeconfig {
        clusters: vec![NamedCluster {
            name: cluster.to_owned(),
            cluster: Some(Cluster {
                server: Some(server.to_owned()),
                certificate_authority_data: Some(base64(ca_pem)),
                ..Cluster::default()
            }),
            other: Default::default(),
        }],
        auth_infos: vec![NamedAuthInfo {
            name: context.clone(),
            auth_info: Some(AuthInfo {
                client_certificate_data: Some(base64(&credentials.cert_pem)),
                client_key_data: Some(base64(&credentials.key_pem).into()),
                ..AuthInfo::default()
            }),
            other: Default::default(),
        }],
        contexts: vec![NamedContext {
            name: context.clone(),
            context: Some(Context {
                cluster: cluster.to_owned(),
                user: Some(context.clone()),
                ..Context::default()
            }),
            other: Default::default(),
        }],
        current_context: Some(context),
        api_version: Some("v1".into()),
        kind: Some("Config".into()),
        ..Kubeconfig::default()
    }
}

/// The client configuration for a kubeconfig built by [`for_user`].
pub(crate) async fn to_config(cluster: &str, kubeconfig: &Kubeconfig) -> Result<kube::Config> {
    kube::Config::from_custom_kubeconfig(kubeconfig.clone(), &KubeConfigOptions::default())
        .await
        .map_err(|e| Error::Client {
            cluster: cluster.to_owned(),
            reason: e.to_string(),
        })
}

/// Writes `kubeconfig` as YAML to `path`, readable only by its owner since it holds
/// a private key.
pub(crate) fn write(path: &Path, kubeconfig: &Kubeconfig) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    // Plain scalars: kubeconfig readers in other languages expect base64 data on one line.
    let mut options = serde_saphyr::SerializerOptions::default();
    options.prefer_block_scalars = false;
    let yaml = serde_saphyr::to_string_with_options(kubeconfig, options).map_err(|e| {
        Error::io(
            "cannot encode kubeconfig",
            path,
            std::io::Error::other(e.to_string()),
        )
    })?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io("cannot write", path, e))?;
    file.write_all(yaml.as_bytes())
        .map_err(|e| Error::io("cannot write", path, e))
}

fn base64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}
