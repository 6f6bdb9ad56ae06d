//! Access providers: the operator's file that says how to get credentials for the
//! clusters a `ClusterProfile` describes in `status.accessProviders`.
//!
//! # The file
//!
//! JSON, the format of `sigs.k8s.io/cluster-inventory-api`'s `pkg/access` (the
//! `--clusterprofile-provider-file` of its consumers):
//!
//! ```json
//! {
//!   "providers": [
//!     {
//!       "name": "open-cluster-management",
//!       "execConfig": {
//!         "apiVersion": "client.authentication.k8s.io/v1",
//!         "command": "/usr/local/bin/cp-creds",
//!         "args": ["--managed-serviceaccount=consumer"],
//!         "env": [{ "name": "LOG_LEVEL", "value": "warn" }],
//!         "provideClusterInfo": true
//!       },
//!       "profileSourcedCLIArgsPolicy": "Ignore",
//!       "profileSourcedEnvVarsPolicy": "Ignore"
//!     }
//!   ]
//! }
//! ```
//!
//! - `name` matches `status.accessProviders[].name` of the profiles (the deprecated
//!   `status.credentialProviders[]` is read too; `accessProviders` wins on equal
//!   names). When a profile offers several, the first provider **of the file** that
//!   it offers is used.
//! - `execConfig` is a kubeconfig exec credential plugin (client-go's `ExecConfig`:
//!   `apiVersion`, `command`, `args`, `env`, `provideClusterInfo`, `installHint`).
//!   It always runs non-interactively. With `provideClusterInfo`, the plugin gets the
//!   profile's cluster (server, CA, and the `client.authentication.k8s.io/exec`
//!   extension as `config`) in `KUBERNETES_EXEC_INFO`.
//! - `profileSourcedCLIArgsPolicy` (`Ignore`, the default, or `Append`) and
//!   `profileSourcedEnvVarsPolicy` (`Ignore`, the default, `AppendIfNotExists` or
//!   `Replace`) decide whether the profile's cluster extensions
//!   `clusterprofiles.multicluster.x-k8s.io/exec/additional-args` (a list of strings)
//!   and `clusterprofiles.multicluster.x-k8s.io/exec/additional-envs` (a map of
//!   strings) reach the plugin (KEP-5339).
//!
//! # Trust
//!
//! Exec plugins are allowed here because the *operator* named them; a profile can
//! only pick one of them by name, and add arguments or environment only where the
//! operator's policy says so; even then, never a variable that picks the program or
//! loads code into it (`PATH`, `LD_*`, `DYLD_*` and the others of
//! [`REFUSED_PROFILE_ENV_VARS`]): such a profile is refused with an error that names
//! the variable. From the profile, the provider takes the cluster's
//! `server`, `certificate-authority-data`, `tls-server-name`, `proxy-url`,
//! `disable-compression` and `extensions`; it refuses a `certificate-authority`
//! file path, and `insecure-skip-tls-verify: true` and `proxy-url` unless the
//! operator allows them, and holds the server to the operator's
//! [`EndpointPolicy`](crate::cluster::kubeconfig::EndpointPolicy) (see
//! `ClusterProfilesOptions::kubeconfig_policy`).
//! Whoever can write a profile's status can point the plugin's credentials at a
//! server of their choice: restrict who may write `clusterprofiles/status`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::Path;

use kube::api::DynamicObject;
use kube::config::{
    AuthInfo, Cluster as KubeconfigCluster, Context, ExecConfig, Kubeconfig, NamedAuthInfo, NamedCluster,
    NamedContext,
};
use serde::Deserialize;
use serde_json::Value;

use crate::cluster::kubeconfig::{self, KubeconfigPolicy};
use crate::error::{Error, Result};
use crate::providers::object_clusters::Target;

/// The cluster extension with extra plugin arguments (KEP-5339).
pub const ADDITIONAL_ARGS_EXTENSION: &str = "clusterprofiles.multicluster.x-k8s.io/exec/additional-args";
/// The cluster extension with extra plugin environment variables (KEP-5339).
pub const ADDITIONAL_ENVS_EXTENSION: &str = "clusterprofiles.multicluster.x-k8s.io/exec/additional-envs";

const PROVIDER: &str = "profile";

/// Whether a profile's `additional-args` extension is passed to the plugin.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub enum CliArgsPolicy {
    /// Not passed. The default.
    #[default]
    Ignore,
    /// Appended to the operator's `args`.
    Append,
}

/// Whether a profile's `additional-envs` extension is passed to the plugin.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub enum EnvVarsPolicy {
    /// Not passed. The default.
    #[default]
    Ignore,
    /// Added where the operator's `env` does not set the variable. Under this and
    /// [`Replace`](Self::Replace), a profile that sets one of
    /// [`REFUSED_PROFILE_ENV_VARS`] is refused.
    AppendIfNotExists,
    /// Added, replacing the operator's value of the same variable.
    Replace,
}

/// One access provider of the operator's file: a name profiles refer to, and the exec
/// credential plugin that gets credentials for their clusters.
#[derive(Clone, Deserialize)]
pub struct AccessProvider {
    name: String,
    #[serde(rename = "execConfig")]
    exec: Option<ExecConfig>,
    #[serde(rename = "profileSourcedCLIArgsPolicy", default)]
    args_policy: CliArgsPolicy,
    #[serde(rename = "profileSourcedEnvVarsPolicy", default)]
    envs_policy: EnvVarsPolicy,
}

impl fmt::Debug for AccessProvider {
    /// Names the command only: the plugin's environment may hold secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessProvider")
            .field("name", &self.name)
            .field("command", &self.exec.as_ref().and_then(|e| e.command.as_deref()))
            .field("args_policy", &self.args_policy)
            .field("envs_policy", &self.envs_policy)
            .finish_non_exhaustive()
    }
}

impl AccessProvider {
    /// A provider called `name` whose credentials come from the exec plugin `exec`.
    pub fn new(name: impl Into<String>, exec: ExecConfig) -> Self {
        AccessProvider {
            name: name.into(),
            exec: Some(exec),
            args_policy: CliArgsPolicy::default(),
            envs_policy: EnvVarsPolicy::default(),
        }
    }

    /// Sets what happens to a profile's extra plugin arguments.
    #[must_use]
    pub fn cli_args_policy(mut self, policy: CliArgsPolicy) -> Self {
        self.args_policy = policy;
        self
    }

    /// Sets what happens to a profile's extra plugin environment variables.
    #[must_use]
    pub fn env_vars_policy(mut self, policy: EnvVarsPolicy) -> Self {
        self.envs_policy = policy;
        self
    }

    /// The name profiles refer to.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The operator's access providers; see the [module docs](self) for the file format.
///
/// ```
/// use multicluster_runtime::providers::profile::AccessProviders;
///
/// let providers = AccessProviders::from_json(br#"{"providers": [{"name": "ocm",
///     "execConfig": {"apiVersion": "client.authentication.k8s.io/v1", "command": "cp-creds"}}]}"#,
///     "example")?;
/// assert_eq!(providers.names(), vec!["ocm"]);
/// # Ok::<(), multicluster_runtime::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct AccessProviders {
    providers: Vec<AccessProvider>,
}

#[derive(Deserialize)]
struct File {
    #[serde(default)]
    providers: Vec<AccessProvider>,
}

impl AccessProviders {
    /// The given providers.
    ///
    /// # Errors
    /// [`Error::Provider`] if a name is empty or repeated, or a provider has no
    /// exec plugin command.
    pub fn new(providers: impl IntoIterator<Item = AccessProvider>) -> Result<Self> {
        Self::checked(providers.into_iter().collect(), "access providers")
    }

    /// Reads a provider file.
    ///
    /// # Errors
    /// [`Error::Provider`] naming the file if it cannot be read or is not a
    /// provider file (by position, never quoting it), or as for [`new`](Self::new).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let origin = format!("provider file {}", path.display());
        let data = std::fs::read(path).map_err(|e| invalid(&origin, format!("cannot read it: {e}")))?;
        Self::from_json(&data, &origin)
    }

    /// Parses the JSON of a provider file; `origin` names it in errors.
    ///
    /// # Errors
    /// As for [`from_file`](Self::from_file).
    pub fn from_json(data: &[u8], origin: &str) -> Result<Self> {
        let file: File = serde_json::from_slice(data).map_err(|e| {
            invalid(
                origin,
                format!("not a provider file: {}", redact_quotes(&e.to_string())),
            )
        })?;
        Self::checked(file.providers, origin)
    }

    fn checked(providers: Vec<AccessProvider>, origin: &str) -> Result<Self> {
        let mut seen = HashSet::new();
        for provider in &providers {
            if provider.name.is_empty() {
                return Err(invalid(origin, "a provider has no name".into()));
            }
            if !seen.insert(provider.name.as_str()) {
                return Err(invalid(
                    origin,
                    format!("provider {:?} is listed twice", provider.name),
                ));
            }
            let command = provider.exec.as_ref().and_then(|e| e.command.as_deref());
            if command.is_none_or(str::is_empty) {
                let reason = format!("provider {:?} has no execConfig.command", provider.name);
                return Err(invalid(origin, reason));
            }
        }
        Ok(AccessProviders { providers })
    }

    /// The names of the providers, in file order.
    pub fn names(&self) -> Vec<&str> {
        self.providers.iter().map(|p| p.name.as_str()).collect()
    }

    /// Whether there are no providers.
    pub fn is_empty(&self) -> bool {
        self.providers.is_empty()
    }

    /// The target for `profile`, `None` if it offers none of the providers, or why
    /// the one it offers cannot be used.
    pub(crate) fn target_for(
        &self,
        profile: &DynamicObject,
        origin: &str,
        policy: &KubeconfigPolicy,
    ) -> Option<Result<Target, String>> {
        let offered = offered(profile);
        let provider = self
            .providers
            .iter()
            .find(|p| offered.contains_key(p.name.as_str()))?;
        let cluster = offered.get(provider.name.as_str())?;
        let origin = format!("{origin} access provider {:?}", provider.name);
        Some(build_target(provider, cluster, origin, policy))
    }
}

/// The access providers `profile` offers, by name: `status.credentialProviders`
/// (deprecated), then `status.accessProviders`, which wins on equal names.
pub(crate) fn offered(profile: &DynamicObject) -> BTreeMap<&str, &Value> {
    let status = profile.data.get("status");
    let mut offered = BTreeMap::new();
    for field in ["credentialProviders", "accessProviders"] {
        let list = status.and_then(|s| s.get(field)).and_then(Value::as_array);
        for entry in list.into_iter().flatten() {
            if let Some(name) = entry.get("name").and_then(Value::as_str) {
                offered.insert(name, entry.get("cluster").unwrap_or(&Value::Null));
            }
        }
    }
    offered
}

/// A kubeconfig of the profile's cluster and the operator's exec plugin.
fn build_target(
    provider: &AccessProvider,
    cluster: &Value,
    origin: String,
    policy: &KubeconfigPolicy,
) -> Result<Target, String> {
    let mut cluster: KubeconfigCluster = serde_json::from_value(cluster.clone()).map_err(|e| {
        format!(
            "{origin}: its cluster is not a kubeconfig cluster: {}",
            redact_quotes(&e.to_string())
        )
    })?;
    if cluster.server.as_deref().is_none_or(str::is_empty) {
        return Err(format!("{origin}: its cluster has no server"));
    }
    if cluster.insecure_skip_tls_verify == Some(true) && !policy.allow_insecure_skip_tls_verify {
        return Err(format!(
            "{origin}: its cluster asks to skip TLS verification; refused: allowed only when \
             the operator enables allow_insecure_skip_tls_verify"
        ));
    }
    let Some(mut exec) = provider.exec.clone() else {
        return Err(format!("{origin}: the provider has no exec plugin"));
    };
    for extension in cluster.extensions.iter().flatten() {
        match extension.name.as_str() {
            ADDITIONAL_ARGS_EXTENSION => add_args(&mut exec, &extension.extension, provider.args_policy)
                .map_err(|why| format!("{origin}: extension {ADDITIONAL_ARGS_EXTENSION}: {why}"))?,
            ADDITIONAL_ENVS_EXTENSION => add_envs(&mut exec, &extension.extension, provider.envs_policy)
                .map_err(|why| format!("{origin}: extension {ADDITIONAL_ENVS_EXTENSION}: {why}"))?,
            _ => {}
        }
    }
    // Fields unknown to kubeconfigs mean nothing to the client: kept out of the
    // fingerprint, they cannot cause a re-engagement.
    cluster.other.clear();
    const NAME: &str = "profile";
    let mut kubeconfig = Kubeconfig {
        clusters: vec![NamedCluster {
            name: NAME.into(),
            cluster: Some(cluster),
            ..NamedCluster::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: provider.name.clone(),
            auth_info: Some(AuthInfo {
                exec: Some(exec),
                ..AuthInfo::default()
            }),
            ..NamedAuthInfo::default()
        }],
        contexts: vec![NamedContext {
            name: NAME.into(),
            context: Some(Context {
                cluster: NAME.into(),
                user: Some(provider.name.clone()),
                ..Context::default()
            }),
            ..NamedContext::default()
        }],
        current_context: Some(NAME.into()),
        ..Kubeconfig::default()
    };
    // The exec plugin is the operator's; from the profile, no local files, and the
    // operator's rules for proxies and servers.
    let policy = KubeconfigPolicy {
        allow_exec: true,
        allow_local_files: false,
        ..policy.clone()
    };
    kubeconfig::vet(&mut kubeconfig, &policy, &origin).map_err(|e| e.to_string())?;
    Ok(Target::new(kubeconfig, NAME.into(), origin, &policy))
}

fn add_args(exec: &mut ExecConfig, value: &Value, policy: CliArgsPolicy) -> Result<(), String> {
    if policy == CliArgsPolicy::Ignore {
        return Ok(());
    }
    let args: Vec<String> =
        serde_json::from_value(value.clone()).map_err(|_| "expected a list of strings".to_owned())?;
    exec.args.get_or_insert_with(Vec::new).extend(args);
    Ok(())
}

fn add_envs(exec: &mut ExecConfig, value: &Value, policy: EnvVarsPolicy) -> Result<(), String> {
    if policy == EnvVarsPolicy::Ignore {
        return Ok(());
    }
    let extra: BTreeMap<String, String> =
        serde_json::from_value(value.clone()).map_err(|_| "expected a map of strings".to_owned())?;
    for name in extra.keys() {
        if let Some(why) = refused_env_name(name) {
            return Err(why);
        }
    }
    let env = exec.env.get_or_insert_with(Vec::new);
    for (name, value) in extra {
        let existing = env
            .iter_mut()
            .find(|entry| entry.get("name").map(String::as_str) == Some(name.as_str()));
        match (existing, policy) {
            (Some(entry), EnvVarsPolicy::Replace) => {
                entry.insert("value".into(), value);
            }
            (Some(_), _) => {}
            (None, _) => env.push(HashMap::from([("name".into(), name), ("value".into(), value)])),
        }
    }
    Ok(())
}

/// Environment variables a profile may not set for the operator's plugin, whatever
/// the operator's [`EnvVarsPolicy`]: they change which program runs, or load code
/// into it, rather than configure it.
///
/// - `PATH`: which program a bare command name (and anything the plugin starts)
///   runs;
/// - every `LD_*` (`LD_PRELOAD`, `LD_LIBRARY_PATH`, `LD_AUDIT`, …) and `DYLD_*`
///   variable: the dynamic loader loads libraries of their choice into the plugin;
/// - `BASH_ENV`, `ENV` and `BASH_FUNC_*`: a shell-script plugin reads a file of
///   their choice, or imports functions, before its first line;
/// - `GCONV_PATH`, `HOSTALIASES`, `RESOLV_HOST_CONF`, `LOCALDOMAIN`: the C library
///   loads modules or reads name resolution from where they say;
/// - interpreters' start-up hooks: `PYTHONPATH`, `PYTHONSTARTUP`, `PYTHONHOME`,
///   `PERL5LIB`, `PERL5OPT`, `RUBYLIB`, `RUBYOPT`, `NODE_OPTIONS`,
///   `JAVA_TOOL_OPTIONS`, `_JAVA_OPTIONS`;
/// - `KUBERNETES_EXEC_INFO`: what kube tells the plugin about the cluster.
///
/// Names are compared without regard to case (Windows reads `Path` as `PATH`).
/// Empty names and names with `=` or NUL are refused too: `LD_PRELOAD=x` as a name
/// would reach the plugin as the variable `LD_PRELOAD`.
pub const REFUSED_PROFILE_ENV_VARS: &[&str] = &[
    "PATH",
    "BASH_ENV",
    "ENV",
    "GCONV_PATH",
    "HOSTALIASES",
    "RESOLV_HOST_CONF",
    "LOCALDOMAIN",
    "PYTHONPATH",
    "PYTHONSTARTUP",
    "PYTHONHOME",
    "PERL5LIB",
    "PERL5OPT",
    "RUBYLIB",
    "RUBYOPT",
    "NODE_OPTIONS",
    "JAVA_TOOL_OPTIONS",
    "_JAVA_OPTIONS",
    "KUBERNETES_EXEC_INFO",
];

/// Prefixes of [`REFUSED_PROFILE_ENV_VARS`]: every variable starting with one.
const REFUSED_PROFILE_ENV_PREFIXES: &[&str] = &["LD_", "DYLD_", "BASH_FUNC_"];

/// Why a profile may not set the environment variable `name`, if it may not. The
/// reason names the variable, never a value.
fn refused_env_name(name: &str) -> Option<String> {
    if name.is_empty() || name.contains(['=', '\0']) {
        return Some("an environment variable name is empty or holds '=' or NUL; refused".into());
    }
    let upper = name.to_ascii_uppercase();
    let refused = REFUSED_PROFILE_ENV_VARS.contains(&upper.as_str())
        || REFUSED_PROFILE_ENV_PREFIXES
            .iter()
            .any(|prefix| upper.starts_with(prefix));
    refused.then(|| {
        format!(
            "sets the environment variable {name:?}, which changes what program runs or loads \
             code into it; refused: a profile may not set it, whatever the provider's \
             profileSourcedEnvVarsPolicy"
        )
    })
}

fn invalid(origin: &str, reason: String) -> Error {
    Error::Provider {
        provider: PROVIDER.into(),
        source: format!("{origin}: {reason}").into(),
    }
}

/// `message` without the text between double quotes: serde quotes the values it
/// cannot use, and values may be secrets. Field names (in backticks) stay.
pub(crate) fn redact_quotes(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut quoted = false;
    for c in message.chars() {
        match (c, quoted) {
            ('"', false) => {
                quoted = true;
                out.push_str("\"…");
            }
            ('"', true) => {
                quoted = false;
                out.push('"');
            }
            (_, true) => {}
            (c, false) => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CA: &str = "Q0EK";

    fn insecure_allowed() -> KubeconfigPolicy {
        KubeconfigPolicy {
            allow_insecure_skip_tls_verify: true,
            ..KubeconfigPolicy::untrusted()
        }
    }

    fn file(extra: &str) -> AccessProviders {
        let json = format!(
            r#"{{"providers": [
                {{"name": "other", "execConfig": {{"apiVersion": "client.authentication.k8s.io/v1", "command": "other"}}}},
                {{"name": "ocm", "execConfig": {{"apiVersion": "client.authentication.k8s.io/v1", "command": "/bin/creds",
                  "args": ["--a"], "env": [{{"name": "KEEP", "value": "operator"}}], "provideClusterInfo": true}}{extra}}}
            ]}}"#
        );
        AccessProviders::from_json(json.as_bytes(), "test file").expect("valid file")
    }

    fn profile(status: Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "multicluster.x-k8s.io/v1alpha1",
            "kind": "ClusterProfile",
            "metadata": { "name": "p", "namespace": "inv" },
            "status": status,
        }))
        .expect("a profile")
    }

    fn access(name: &str, cluster: Value) -> Value {
        json!({ "accessProviders": [{ "name": name, "cluster": cluster }] })
    }

    fn exec_of(target: &Target) -> ExecConfig {
        target.kubeconfig.auth_infos[0]
            .auth_info
            .as_ref()
            .and_then(|a| a.exec.clone())
            .expect("exec")
    }

    #[test]
    fn builds_server_ca_and_exec() {
        let providers = file("");
        let p = profile(access(
            "ocm",
            json!({ "server": "https://10.0.0.1:6443", "certificate-authority-data": CA, "tls-server-name": "api" }),
        ));
        let target = providers
            .target_for(&p, "ClusterProfile inv/p", &KubeconfigPolicy::untrusted())
            .expect("offered")
            .expect("valid");
        let cluster = target.kubeconfig.clusters[0].cluster.as_ref().expect("cluster");
        assert_eq!(cluster.server.as_deref(), Some("https://10.0.0.1:6443"));
        assert_eq!(cluster.certificate_authority_data.as_deref(), Some(CA));
        assert_eq!(cluster.tls_server_name.as_deref(), Some("api"));
        let exec = exec_of(&target);
        assert_eq!(exec.command.as_deref(), Some("/bin/creds"));
        assert!(exec.provide_cluster_info);
        assert_eq!(
            exec.interactive_mode,
            Some(kube::config::ExecInteractiveMode::Never)
        );
        assert!(target.origin.contains("\"ocm\""), "{}", target.origin);
    }

    #[test]
    fn picks_the_first_provider_of_the_file_and_none_if_unknown() {
        let providers = file("");
        let both = profile(json!({ "accessProviders": [
            { "name": "ocm", "cluster": { "server": "https://ocm" } },
            { "name": "other", "cluster": { "server": "https://other" } },
        ]}));
        let target = providers
            .target_for(&both, "p", &KubeconfigPolicy::untrusted())
            .expect("offered")
            .expect("valid");
        assert_eq!(exec_of(&target).command.as_deref(), Some("other"));
        let unknown = profile(access("gke", json!({ "server": "https://x" })));
        assert!(
            providers
                .target_for(&unknown, "p", &KubeconfigPolicy::untrusted())
                .is_none()
        );
        assert!(
            providers
                .target_for(&profile(json!({})), "p", &KubeconfigPolicy::untrusted())
                .is_none()
        );
    }

    #[test]
    fn reads_deprecated_credential_providers() {
        let p = profile(
            json!({ "credentialProviders": [{ "name": "ocm", "cluster": { "server": "https://old" } }] }),
        );
        let target = file("")
            .target_for(&p, "p", &KubeconfigPolicy::untrusted())
            .expect("offered")
            .expect("valid");
        let server = target.kubeconfig.clusters[0]
            .cluster
            .as_ref()
            .and_then(|c| c.server.clone());
        assert_eq!(server.as_deref(), Some("https://old"));
    }

    #[test]
    fn refuses_what_a_profile_must_not_ask_for() {
        let providers = file("");
        let refuse = |cluster: Value| {
            providers
                .target_for(
                    &profile(access("ocm", cluster)),
                    "p",
                    &KubeconfigPolicy::untrusted(),
                )
                .expect("offered")
                .err()
                .expect("refused")
        };
        let err = refuse(json!({ "server": "https://x", "insecure-skip-tls-verify": true }));
        assert!(err.contains("skip TLS verification"), "{err}");
        let err = refuse(json!({ "server": "https://x", "certificate-authority": "/etc/shadow" }));
        assert!(
            err.contains("certificate-authority") && !err.contains("/etc/shadow"),
            "{err}"
        );
        let err = refuse(json!({ "certificate-authority-data": CA }));
        assert!(err.contains("no server"), "{err}");
        let err = refuse(json!({ "server": 42 }));
        assert!(err.contains("not a kubeconfig cluster"), "{err}");
        let insecure = profile(access(
            "ocm",
            json!({ "server": "https://x", "insecure-skip-tls-verify": true }),
        ));
        assert!(
            providers
                .target_for(&insecure, "p", &insecure_allowed())
                .expect("offered")
                .is_ok()
        );
        let err = refuse(json!({ "server": "https://x", "proxy-url": "http://user:pa55@proxy:3128" }));
        assert!(
            err.contains("proxy-url is set; refused by rule allow_proxy_url"),
            "{err}"
        );
        assert!(!err.contains("pa55"), "{err}");
        let metadata = profile(access("ocm", json!({ "server": "https://169.254.169.254" })));
        let fenced = KubeconfigPolicy::untrusted().endpoints(kubeconfig::EndpointPolicy::deny_local());
        let err = providers
            .target_for(&metadata, "p", &fenced)
            .expect("offered")
            .err()
            .expect("denied");
        assert!(
            err.contains("server host is in the deny-list entry 169.254.0.0/16"),
            "{err}"
        );
        assert!(!err.contains("169.254.169.254"), "{err}");
    }

    #[test]
    fn profile_extensions_follow_the_operator_policy() {
        let cluster = json!({ "server": "https://x", "extensions": [
            { "name": ADDITIONAL_ARGS_EXTENSION, "extension": ["--cluster=eu-1"] },
            { "name": ADDITIONAL_ENVS_EXTENSION, "extension": { "KEEP": "profile", "NEW": "1" } },
        ]});
        let p = profile(access("ocm", cluster));
        let env = |exec: &ExecConfig| -> BTreeMap<String, String> {
            exec.env
                .iter()
                .flatten()
                .map(|e| (e["name"].clone(), e["value"].clone()))
                .collect()
        };

        let ignored = exec_of(
            &file("")
                .target_for(&p, "p", &KubeconfigPolicy::untrusted())
                .expect("offered")
                .expect("valid"),
        );
        assert_eq!(ignored.args, Some(vec!["--a".to_owned()]));
        assert_eq!(env(&ignored).len(), 1);

        let appended = file(
            r#", "profileSourcedCLIArgsPolicy": "Append", "profileSourcedEnvVarsPolicy": "AppendIfNotExists""#,
        );
        let exec = exec_of(
            &appended
                .target_for(&p, "p", &KubeconfigPolicy::untrusted())
                .expect("offered")
                .expect("valid"),
        );
        assert_eq!(
            exec.args,
            Some(vec!["--a".to_owned(), "--cluster=eu-1".to_owned()])
        );
        assert_eq!(env(&exec)["KEEP"], "operator");
        assert_eq!(env(&exec)["NEW"], "1");

        let replaced = file(r#", "profileSourcedEnvVarsPolicy": "Replace""#);
        let exec = exec_of(
            &replaced
                .target_for(&p, "p", &KubeconfigPolicy::untrusted())
                .expect("offered")
                .expect("valid"),
        );
        assert_eq!(env(&exec)["KEEP"], "profile");

        let bad = profile(access(
            "ocm",
            json!({ "server": "https://x", "extensions": [
            { "name": ADDITIONAL_ARGS_EXTENSION, "extension": { "not": "a list" } }] }),
        ));
        let err = appended
            .target_for(&bad, "p", &KubeconfigPolicy::untrusted())
            .expect("offered")
            .err()
            .expect("invalid");
        assert!(err.contains("list of strings"), "{err}");
    }

    /// x06: a profile cannot set the variables that choose the program or load code
    /// into it (`PATH`, `LD_*`, `DYLD_*`, …), under any policy that passes its
    /// variables on; the error names the variable, not its value. The operator's own
    /// `env` is not limited, and other variables still pass.
    #[test]
    fn x06_a_profile_cannot_set_loader_or_path_variables() {
        const VALUE: &str = "/tmp/x06-marker-value.so";
        for policy in ["AppendIfNotExists", "Replace"] {
            let providers = file(&format!(r#", "profileSourcedEnvVarsPolicy": "{policy}""#));
            for name in [
                "LD_PRELOAD",
                "LD_LIBRARY_PATH",
                "PATH",
                "LD_AUDIT",
                "DYLD_INSERT_LIBRARIES",
                "ld_preload",
                "Path",
                "BASH_ENV",
                "BASH_FUNC_curl%%",
                "LD_PRELOAD=/x.so",
                "KUBERNETES_EXEC_INFO",
            ] {
                let envs = json!({ "KEEP2": "fine", name: VALUE });
                let cluster = json!({ "server": "https://x", "extensions": [
                    { "name": ADDITIONAL_ENVS_EXTENSION, "extension": envs }] });
                let err = providers
                    .target_for(
                        &profile(access("ocm", cluster)),
                        "ClusterProfile inv/p",
                        &KubeconfigPolicy::untrusted(),
                    )
                    .expect("offered")
                    .err()
                    .unwrap_or_else(|| panic!("{name} is refused under {policy}"));
                assert!(
                    err.starts_with("ClusterProfile inv/p access provider \"ocm\": extension"),
                    "{err}"
                );
                assert!(!err.contains("x06-marker"), "{err}");
                if !name.contains('=') {
                    assert!(
                        err.contains(&format!("environment variable {name:?}")) && err.contains("refused"),
                        "{err}"
                    );
                }
            }
            let cluster = json!({ "server": "https://x", "extensions": [
                { "name": ADDITIONAL_ENVS_EXTENSION, "extension": { "LOG_LEVEL": "debug", "PATHS": "a" } }] });
            providers
                .target_for(
                    &profile(access("ocm", cluster)),
                    "p",
                    &KubeconfigPolicy::untrusted(),
                )
                .expect("offered")
                .expect("ordinary variables pass");
        }
        // Ignored variables are not looked at: nothing reaches the plugin.
        let cluster = json!({ "server": "https://x", "extensions": [
            { "name": ADDITIONAL_ENVS_EXTENSION, "extension": { "LD_PRELOAD": VALUE } }] });
        let target = file("")
            .target_for(
                &profile(access("ocm", cluster)),
                "p",
                &KubeconfigPolicy::untrusted(),
            )
            .expect("offered")
            .expect("ignored");
        assert!(
            exec_of(&target)
                .env
                .iter()
                .flatten()
                .all(|e| e["name"] != "LD_PRELOAD")
        );
    }

    #[test]
    fn the_fingerprint_follows_endpoint_and_plugin() {
        let providers = file("");
        let fingerprint = |server: &str| {
            let p = profile(access(
                "ocm",
                json!({ "server": server, "certificate-authority-data": CA }),
            ));
            let target = providers
                .target_for(&p, "p", &KubeconfigPolicy::untrusted())
                .expect("offered")
                .expect("valid");
            kubeconfig::fingerprint(&target.kubeconfig, &target.context).expect("fingerprint")
        };
        assert_eq!(fingerprint("https://a"), fingerprint("https://a"));
        assert_ne!(fingerprint("https://a"), fingerprint("https://b"));
    }

    #[test]
    fn file_errors_do_not_quote_the_file() {
        let secret = "hunter2-api-key";
        let wrong_type = format!(
            r#"{{"providers": [{{"name": "x", "execConfig": {{"command": "c", "env": "{secret}"}}}}]}}"#
        );
        let err = AccessProviders::from_json(wrong_type.as_bytes(), "f")
            .expect_err("invalid")
            .to_string();
        assert!(
            err.contains("not a provider file") && !err.contains(secret),
            "{err}"
        );
        let broken = format!(r#"{{"providers": [{{"name": "{secret}"#);
        let err = AccessProviders::from_json(broken.as_bytes(), "f")
            .expect_err("invalid")
            .to_string();
        assert!(!err.contains(secret), "{err}");
        let err = AccessProviders::from_json(br#"{"providers": [{"name": "x"}]}"#, "f").expect_err("no exec");
        assert!(err.to_string().contains("no execConfig.command"), "{err}");
        let twice = br#"{"providers": [{"name": "x", "execConfig": {"command": "a"}}, {"name": "x", "execConfig": {"command": "b"}}]}"#;
        let err = AccessProviders::from_json(twice, "f").expect_err("twice");
        assert!(err.to_string().contains("listed twice"), "{err}");
        let policy = br#"{"providers": [{"name": "x", "execConfig": {"command": "a"}, "profileSourcedCLIArgsPolicy": "Sometimes"}]}"#;
        assert!(AccessProviders::from_json(policy, "f").is_err());
        assert!(AccessProviders::from_file("/nonexistent/providers.json").is_err());
    }

    #[test]
    fn redaction_keeps_field_names() {
        assert_eq!(
            redact_quotes(r#"invalid type: string "s3cr3t", expected a sequence at line 1 column 9"#),
            r#"invalid type: string "…", expected a sequence at line 1 column 9"#
        );
        assert_eq!(redact_quotes("missing field `server`"), "missing field `server`");
    }

    fn access_file() -> impl proptest::strategy::Strategy<Value = Value> {
        use crate::providers::fuzz::{any_json, scalar};
        use proptest::prelude::*;
        let provider = (
            prop::sample::select(vec!["ocm", "other", ""]),
            prop::option::of(("[a-z/]{0,10}", prop::collection::vec(scalar(), 0..3), any_json())),
            prop::sample::select(vec!["Ignore", "Append", "Sometimes"]),
            prop::sample::select(vec!["Ignore", "AppendIfNotExists", "Replace", "Never"]),
        )
            .prop_map(|(name, exec, args, envs)| {
                let exec = exec.map(|(command, args, env)| {
                    json!({ "apiVersion": "client.authentication.k8s.io/v1", "command": command,
                            "args": args, "env": env, "provideClusterInfo": true })
                });
                json!({ "name": name, "execConfig": exec,
                        "profileSourcedCLIArgsPolicy": args, "profileSourcedEnvVarsPolicy": envs })
            });
        prop::collection::vec(provider, 0..3).prop_map(|providers| json!({ "providers": providers }))
    }

    fn profile_status() -> impl proptest::strategy::Strategy<Value = Value> {
        use crate::providers::fuzz::{any_json, cluster};
        use proptest::prelude::*;
        let extensions = (
            prop::collection::vec(crate::providers::fuzz::scalar(), 0..3),
            any_json(),
        )
            .prop_map(|(args, envs)| {
                json!([
                    { "name": ADDITIONAL_ARGS_EXTENSION, "extension": args },
                    { "name": ADDITIONAL_ENVS_EXTENSION, "extension": envs },
                ])
            });
        let entry = (
            prop::sample::select(vec!["ocm", "other", "unknown"]),
            cluster(),
            prop::option::of(extensions),
        )
            .prop_map(|(name, mut cluster, extensions)| {
                if let (Some(extensions), Some(map)) = (extensions, cluster.as_object_mut()) {
                    map.insert("extensions".into(), extensions);
                }
                json!({ "name": name, "cluster": cluster })
            })
            .boxed();
        (
            prop::collection::vec(entry.clone(), 0..3),
            prop::collection::vec(entry, 0..2),
            prop::option::of(any_json()),
            prop::sample::select(vec!["True", "False", "Unknown"]),
        )
            .prop_map(|(access, credential, junk, healthy)| {
                json!({
                    "accessProviders": access,
                    "credentialProviders": credential,
                    "conditions": [{ "type": "ControlPlaneHealthy", "status": healthy }],
                    "junk": junk,
                })
            })
    }

    proptest::proptest! {
        #![proptest_config(crate::providers::fuzz::config())]

        /// The operator's provider file, mostly well-formed, sometimes bytes.
        #[test]
        fn p05_fuzz_access_provider_file(
            bytes in proptest::prop_oneof![
                3 => crate::providers::fuzz::encoded(access_file()),
                1 => proptest::collection::vec(proptest::prelude::any::<u8>(), 0..128),
            ],
        ) {
            if let Err(error) = AccessProviders::from_json(&bytes, "provider file f") {
                crate::providers::fuzz::assert_no_marker("provider file", &error.to_string());
            }
        }

        /// A profile's status, as anyone allowed to write it may set it.
        #[test]
        fn p05_fuzz_profile_status(
            status in profile_status(),
            insecure in proptest::prelude::any::<bool>(),
            fenced in proptest::prelude::any::<bool>(),
        ) {
            let providers = file(r#", "profileSourcedCLIArgsPolicy": "Append", "profileSourcedEnvVarsPolicy": "Replace""#);
            let p = profile(status);
            let _ = offered(&p);
            let _ = super::super::control_plane_healthy(&p);
            let mut policy = KubeconfigPolicy {
                allow_insecure_skip_tls_verify: insecure,
                ..KubeconfigPolicy::untrusted()
            };
            if fenced {
                policy = policy.endpoints(kubeconfig::EndpointPolicy::deny_local());
            }
            if let Some(Err(why)) = providers.target_for(&p, "ClusterProfile inv/p", &policy) {
                crate::providers::fuzz::assert_no_marker("profile", &why);
            }
        }
    }
}
