//! Installing custom resource definitions and waiting until they are served.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, CustomResourceExt};

use crate::cluster::LocalCluster;
use crate::error::{Error, Result};

/// How long a CRD may take to be established and discoverable.
const SERVE_TIMEOUT: Duration = Duration::from_secs(30);
const FIELD_MANAGER: &str = "kube-envtest";

impl LocalCluster {
    /// Installs the CRD of a Rust type (from `#[derive(CustomResource)]`) and waits
    /// until it is served.
    ///
    /// # Errors
    /// [`Error::Api`] if the apply fails, [`Error::CrdNotServed`] after 30 s.
    pub async fn install_crd<K: CustomResourceExt>(&self) -> Result<()> {
        self.install_crds([K::crd()]).await
    }

    /// Installs every CRD in a YAML or JSON file (several documents allowed), or in
    /// every `.yaml`, `.yml` and `.json` file of a directory, and waits until all are
    /// served. Returns the names of the CRDs installed.
    ///
    /// # Errors
    /// [`Error::CrdManifest`] naming the file for unreadable files, bad YAML or a
    /// document that is not a CustomResourceDefinition; otherwise as for
    /// [`install_crd`](Self::install_crd).
    pub async fn install_crds_from_path(&self, path: impl AsRef<Path>) -> Result<Vec<String>> {
        let crds = read_crds(path.as_ref())?;
        let names = crds.iter().filter_map(|crd| crd.metadata.name.clone()).collect();
        self.install_crds(crds).await?;
        Ok(names)
    }

    /// Applies the given CRDs (server-side apply, so re-installing is harmless) and
    /// waits until each is established and its versions are discoverable.
    ///
    /// # Errors
    /// As for [`install_crd`](Self::install_crd).
    pub async fn install_crds(&self, crds: impl IntoIterator<Item = CustomResourceDefinition>) -> Result<()> {
        let client = self.client()?;
        let api: Api<CustomResourceDefinition> = Api::all(client.clone());
        let crds: Vec<CustomResourceDefinition> = crds.into_iter().collect();
        for crd in &crds {
            let name = crd.metadata.name.clone().unwrap_or_default();
            api.patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(crd),
            )
            .await
            .map_err(|source| self.api_error(format!("cannot apply CRD {name}"), source))?;
        }
        for crd in &crds {
            wait_served(&client, &api, crd).await?;
        }
        Ok(())
    }

    fn api_error(&self, action: String, source: kube::Error) -> Error {
        Error::Api {
            action,
            cluster: self.name().to_owned(),
            source,
        }
    }
}

async fn wait_served(
    client: &Client,
    api: &Api<CustomResourceDefinition>,
    crd: &CustomResourceDefinition,
) -> Result<()> {
    let name = crd.metadata.name.clone().unwrap_or_default();
    let started = Instant::now();
    loop {
        let missing = match api.get(&name).await {
            Ok(current) if !is_established(&current) => "the Established condition".to_owned(),
            Ok(_) => match undiscovered_version(client, crd).await {
                None => return Ok(()),
                Some(version) => format!("{version} in discovery"),
            },
            Err(e) => format!("the CRD itself ({e})"),
        };
        if started.elapsed() > SERVE_TIMEOUT {
            return Err(Error::CrdNotServed {
                name,
                waited: SERVE_TIMEOUT,
                last: format!("still missing {missing}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn is_established(crd: &CustomResourceDefinition) -> bool {
    let conditions = crd.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions.is_some_and(|all| all.iter().any(|c| c.type_ == "Established" && c.status == "True"))
}

/// The first served `group/version` whose resource list does not show the CRD yet.
async fn undiscovered_version(client: &Client, crd: &CustomResourceDefinition) -> Option<String> {
    let plural = &crd.spec.names.plural;
    for version in crd.spec.versions.iter().filter(|v| v.served) {
        let group_version = format!("{}/{}", crd.spec.group, version.name);
        let listed = client.list_api_group_resources(&group_version).await;
        if !listed.is_ok_and(|list| list.resources.iter().any(|r| &r.name == plural)) {
            return Some(group_version);
        }
    }
    None
}

/// Reads CRDs from a file or from the manifest files of a directory.
fn read_crds(path: &Path) -> Result<Vec<CustomResourceDefinition>> {
    let files = if path.is_dir() {
        let entries = std::fs::read_dir(path).map_err(|e| manifest_error(path, e.to_string()))?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .is_some_and(|ext| ext == "yaml" || ext == "yml" || ext == "json")
            })
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut crds = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| manifest_error(&file, e.to_string()))?;
        crds.extend(parse_crds(&text).map_err(|reason| manifest_error(&file, reason))?);
    }
    Ok(crds)
}

/// Parses every non-empty document of a manifest as a CRD.
fn parse_crds(text: &str) -> std::result::Result<Vec<CustomResourceDefinition>, String> {
    let documents: Vec<serde_json::Value> =
        serde_saphyr::from_str_multiple(text).map_err(|e| e.to_string())?;
    documents
        .into_iter()
        .enumerate()
        .filter(|(_, doc)| !doc.is_null())
        .map(|(index, doc)| {
            let kind = doc
                .get("kind")
                .and_then(|k| k.as_str())
                .unwrap_or("<none>")
                .to_owned();
            if kind != "CustomResourceDefinition" {
                return Err(format!(
                    "document {} is a {kind}, not a CustomResourceDefinition",
                    index + 1
                ));
            }
            serde_json::from_value(doc).map_err(|e| format!("document {}: {e}", index + 1))
        })
        .collect()
}

fn manifest_error(path: &Path, reason: String) -> Error {
    Error::CrdManifest {
        path: path.to_path_buf(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_documents_that_are_not_crds() {
        let err =
            parse_crds("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n").expect_err("not a CRD");
        assert!(err.contains("document 1 is a ConfigMap"), "{err}");
    }

    #[test]
    fn reports_yaml_errors() {
        assert!(parse_crds("kind: [unclosed").is_err());
    }

    #[test]
    fn skips_empty_documents() {
        assert!(
            parse_crds("---\n---\n")
                .expect("empty documents are fine")
                .is_empty()
        );
    }
}
