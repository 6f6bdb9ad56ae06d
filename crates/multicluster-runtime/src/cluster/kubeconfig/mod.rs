//! Kubeconfigs that come from outside the program: parsing, vetting, and turning a
//! context into a client configuration.
//!
//! Providers read kubeconfigs from files, Secrets and inventories. Whoever can write
//! such a Secret must not gain code execution in the controller or read its files, so
//! a [`KubeconfigPolicy`] decides what a kubeconfig may ask for; the default refuses
//! exec credential plugins, auth providers and references to local files. Errors
//! never quote the kubeconfig: they name its origin, the offending entry by its
//! position (`users[0]`, `clusters[1]`), the field and the rule only, so neither a
//! credential nor anything else the kubeconfig's writer chose (a command, an auth
//! provider's name, a server's host, an entry's name) reaches a log or an Event.
//!
//! The policy also decides where a kubeconfig may make the controller connect: a
//! `proxy-url` and `insecure-skip-tls-verify: true` are refused by default, and an
//! [`EndpointPolicy`] can limit servers to an allow-list and refuse a deny-list of
//! hosts and address ranges (see [`endpoint`] and
//! `docs/decisions/endpoint-policy.md`).

pub mod endpoint;

use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

use kube::config::{ExecInteractiveMode, KubeConfigOptions, Kubeconfig};

use crate::cluster::ClientOptions;
use crate::redact::describe;

pub use self::endpoint::{EndpointPolicy, EndpointRefusal, EndpointRule, EndpointRuleError};

/// What a kubeconfig may ask for, and where it may make the controller connect.
///
/// ```
/// use multicluster_runtime::providers::kubeconfig::{EndpointPolicy, KubeconfigPolicy};
///
/// // Secrets written by tenants: nothing beyond plain credentials, and no server in
/// // the controller's own network or at a cloud metadata address.
/// let policy = KubeconfigPolicy::untrusted().endpoints(EndpointPolicy::deny_local());
/// assert!(!policy.allow_proxy_url && !policy.allow_insecure_skip_tls_verify);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KubeconfigPolicy {
    /// Allow exec credential plugins (they run a program of the kubeconfig's choice).
    pub allow_exec: bool,
    /// Allow references to local files (certificate-authority, client-certificate,
    /// client-key, tokenFile) and legacy auth providers.
    pub allow_local_files: bool,
    /// Allow a cluster's `proxy-url`: all traffic, credentials included, would go
    /// through a host of the kubeconfig's choice. When allowed, the proxy's host is
    /// checked against [`endpoints`](Self::endpoints) like the server's.
    pub allow_proxy_url: bool,
    /// Allow `insecure-skip-tls-verify: true`: the server's certificate would not be
    /// checked, so anyone on the path could read the credentials.
    pub allow_insecure_skip_tls_verify: bool,
    /// Which servers (and proxies) may be connected to. Default: any.
    pub endpoints: EndpointPolicy,
}

impl KubeconfigPolicy {
    /// For kubeconfigs from places others can write (Secrets, inventories, Cluster
    /// API objects): no exec plugins, no local files, no auth providers, no
    /// `proxy-url`, no `insecure-skip-tls-verify`; any server. The default. Add an
    /// [`EndpointPolicy`] with [`endpoints`](Self::endpoints) to limit servers.
    pub fn untrusted() -> Self {
        KubeconfigPolicy::default()
    }

    /// For kubeconfigs the operator chose (files given on the command line): anything.
    pub fn trusted() -> Self {
        KubeconfigPolicy {
            allow_exec: true,
            allow_local_files: true,
            allow_proxy_url: true,
            allow_insecure_skip_tls_verify: true,
            endpoints: EndpointPolicy::any(),
        }
    }

    /// Sets [`endpoints`](Self::endpoints).
    #[must_use]
    pub fn endpoints(mut self, endpoints: EndpointPolicy) -> Self {
        self.endpoints = endpoints;
        self
    }

    /// Sets [`allow_exec`](Self::allow_exec). The policy is `#[non_exhaustive]` (it
    /// grows a field for each new kind of risk), so it is built from
    /// [`untrusted`](Self::untrusted) or [`trusted`](Self::trusted) and these:
    ///
    /// ```
    /// use multicluster_runtime::providers::kubeconfig::KubeconfigPolicy;
    ///
    /// let policy = KubeconfigPolicy::untrusted().allow_exec(true);
    /// assert!(policy.allow_exec && !policy.allow_local_files);
    /// ```
    #[must_use]
    pub fn allow_exec(mut self, allow: bool) -> Self {
        self.allow_exec = allow;
        self
    }

    /// Sets [`allow_local_files`](Self::allow_local_files).
    #[must_use]
    pub fn allow_local_files(mut self, allow: bool) -> Self {
        self.allow_local_files = allow;
        self
    }

    /// Sets [`allow_proxy_url`](Self::allow_proxy_url).
    #[must_use]
    pub fn allow_proxy_url(mut self, allow: bool) -> Self {
        self.allow_proxy_url = allow;
        self
    }

    /// Sets [`allow_insecure_skip_tls_verify`](Self::allow_insecure_skip_tls_verify).
    #[must_use]
    pub fn allow_insecure_skip_tls_verify(mut self, allow: bool) -> Self {
        self.allow_insecure_skip_tls_verify = allow;
        self
    }
}

/// A kubeconfig that cannot be used, and why. Never contains credentials.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KubeconfigError {
    /// Not YAML, or not the shape of a kubeconfig.
    #[error("{origin}: not a valid kubeconfig: {reason}")]
    Invalid {
        /// Where it came from, e.g. a path or `Secret ns/name`.
        origin: String,
        /// What is wrong (positions and field names only, never values).
        reason: String,
    },

    /// The requested context does not exist, or there is none.
    #[error("{origin}: {reason}")]
    NoContext {
        /// Where it came from.
        origin: String,
        /// Which context is missing.
        reason: String,
    },

    /// The kubeconfig asks for something the policy refuses.
    #[error("{origin}: {entry} {what}; refused: {hint}")]
    Refused {
        /// Where it came from.
        origin: String,
        /// The kubeconfig entry that asks for it, by position: `users[0]`, or
        /// `clusters[0]` for a cluster's file. Entry names are the writer's text and
        /// are not quoted.
        entry: String,
        /// What it asks for: the field, never its value.
        what: String,
        /// How an operator can allow it.
        hint: &'static str,
    },

    /// A cluster entry asks for a connection the policy refuses: a `proxy-url`,
    /// `insecure-skip-tls-verify`, or a server (or proxy) the
    /// [`EndpointPolicy`] refuses.
    #[error("{origin}: {entry}: {what}; refused by rule {rule}")]
    Endpoint {
        /// Where it came from.
        origin: String,
        /// The kubeconfig cluster entry, by position: `clusters[0]`.
        entry: String,
        /// The field (`server`, `proxy-url` or `insecure-skip-tls-verify`) and what
        /// is wrong with it: never its value, not even a server's host.
        what: String,
        /// The rule that refused it, e.g. `allow_proxy_url` or `endpoints`.
        rule: &'static str,
    },

    /// kube could not build a client configuration from the context.
    #[error("{origin}: context {context:?} cannot be used: {reason}")]
    Client {
        /// Where it came from.
        origin: String,
        /// The context.
        context: String,
        /// kube's reason.
        reason: String,
    },
}

/// Parses kubeconfig YAML or JSON (several documents are merged, as kubectl does).
///
/// # Errors
/// [`KubeconfigError::Invalid`] with the position of the first syntax error; the
/// text itself is never quoted.
pub fn parse(data: &[u8], origin: &str) -> Result<Kubeconfig, KubeconfigError> {
    let invalid = |reason: String| KubeconfigError::Invalid {
        origin: origin.to_owned(),
        reason,
    };
    let text = std::str::from_utf8(data).map_err(|e| invalid(format!("not UTF-8 text ({e})")))?;
    if text.trim().is_empty() {
        return Err(invalid("it is empty".into()));
    }
    let kubeconfig = Kubeconfig::from_yaml(text).map_err(|e| invalid(describe_parse_error(&e)))?;
    if kubeconfig.contexts.is_empty() {
        return Err(invalid("it has no contexts".into()));
    }
    Ok(kubeconfig)
}

/// Describes a parse failure by position only: parser messages can quote the input.
fn describe_parse_error(error: &kube::config::KubeconfigError) -> String {
    match error {
        kube::config::KubeconfigError::Parse(e) => match e.location() {
            Some(at) => format!(
                "YAML does not match a kubeconfig at line {}, column {}",
                at.line(),
                at.column()
            ),
            None => "YAML does not match a kubeconfig".into(),
        },
        other => other.to_string(),
    }
}

/// Checks every user and cluster of `kubeconfig` against `policy`, and makes exec
/// plugins non-interactive (a controller has nobody to answer a prompt).
///
/// # Errors
/// [`KubeconfigError::Refused`] or [`KubeconfigError::Endpoint`] naming the first
/// entry the policy refuses, by position, and the field and rule: never a value of
/// the kubeconfig.
pub fn vet(
    kubeconfig: &mut Kubeconfig,
    policy: &KubeconfigPolicy,
    origin: &str,
) -> Result<(), KubeconfigError> {
    let refuse = |entry: String, what: String, hint| KubeconfigError::Refused {
        origin: origin.to_owned(),
        entry,
        what,
        hint,
    };
    const EXEC_HINT: &str = "exec credential plugins are allowed only when the operator enables them";
    const FILE_HINT: &str = "local files and auth providers are allowed only when the operator enables them";
    for (index, named) in kubeconfig.auth_infos.iter_mut().enumerate() {
        let Some(auth) = named.auth_info.as_mut() else {
            continue;
        };
        let user = || format!("users[{index}]");
        if let Some(exec) = auth.exec.as_mut() {
            if !policy.allow_exec {
                return Err(refuse(
                    user(),
                    "asks to run an exec credential plugin (user.exec)".into(),
                    EXEC_HINT,
                ));
            }
            exec.interactive_mode = Some(ExecInteractiveMode::Never);
        }
        // kube runs an auth provider's `cmd-path` (gcp) when it builds the client:
        // that is an exec plugin by another name, under the same switch.
        if !policy.allow_exec
            && let Some(provider) = &auth.auth_provider
            && provider.config.contains_key("cmd-path")
        {
            return Err(refuse(
                user(),
                "uses an auth provider that runs a command (cmd-path)".into(),
                EXEC_HINT,
            ));
        }
        if !policy.allow_local_files {
            if auth.auth_provider.is_some() {
                let what = "uses an auth provider (user.auth-provider)".into();
                return Err(refuse(user(), what, FILE_HINT));
            }
            let files = [
                ("client-certificate", &auth.client_certificate),
                ("client-key", &auth.client_key),
                ("tokenFile", &auth.token_file),
            ];
            if let Some((field, _)) = files.iter().find(|(_, value)| value.is_some()) {
                return Err(refuse(
                    user(),
                    format!("reads {field} from a local file"),
                    FILE_HINT,
                ));
            }
        }
    }
    for (index, named) in kubeconfig.clusters.iter().enumerate() {
        if let Some(cluster) = &named.cluster {
            vet_endpoint(index, cluster, policy, origin)?;
        }
    }
    if !policy.allow_local_files {
        for (index, named) in kubeconfig.clusters.iter().enumerate() {
            if named
                .cluster
                .as_ref()
                .is_some_and(|c| c.certificate_authority.is_some())
            {
                let what = "reads certificate-authority from a local file".into();
                return Err(refuse(format!("clusters[{index}]"), what, FILE_HINT));
            }
        }
    }
    Ok(())
}

/// Checks where the cluster entry at `index` connects: its `proxy-url`, its TLS
/// verification and its server, against `policy`.
fn vet_endpoint(
    index: usize,
    cluster: &kube::config::Cluster,
    policy: &KubeconfigPolicy,
    origin: &str,
) -> Result<(), KubeconfigError> {
    let refuse = |field: &str, what: String, rule| KubeconfigError::Endpoint {
        origin: origin.to_owned(),
        entry: format!("clusters[{index}]"),
        what: format!("{field} {what}"),
        rule,
    };
    if cluster.insecure_skip_tls_verify == Some(true) && !policy.allow_insecure_skip_tls_verify {
        return Err(refuse(
            "insecure-skip-tls-verify",
            "is true".into(),
            "allow_insecure_skip_tls_verify (off unless the operator enables it)",
        ));
    }
    if let Some(proxy) = cluster.proxy_url.as_deref().filter(|p| !p.trim().is_empty()) {
        if !policy.allow_proxy_url {
            // Not quoted: a proxy URL may carry a user name and password.
            return Err(refuse(
                "proxy-url",
                "is set".into(),
                "allow_proxy_url (off unless the operator enables it)",
            ));
        }
        policy
            .endpoints
            .check_server(proxy)
            .map_err(|why| refuse("proxy-url", why.to_string(), "endpoints"))?;
    }
    let server = cluster.server.as_deref().unwrap_or_default();
    policy
        .endpoints
        .check_server(server)
        .map_err(|why| refuse("server", why.to_string(), "endpoints"))
}

/// The names of the contexts, in file order.
pub fn context_names(kubeconfig: &Kubeconfig) -> Vec<String> {
    kubeconfig.contexts.iter().map(|c| c.name.clone()).collect()
}

/// The client configuration of `context` (the current context for `None`).
///
/// # Errors
/// [`KubeconfigError::NoContext`] or [`KubeconfigError::Client`].
pub async fn client_config(
    kubeconfig: &Kubeconfig,
    context: Option<&str>,
    origin: &str,
) -> Result<kube::Config, KubeconfigError> {
    let name = match context {
        Some(name) => name.to_owned(),
        None => kubeconfig
            .current_context
            .clone()
            .ok_or_else(|| KubeconfigError::NoContext {
                origin: origin.to_owned(),
                reason: "no current-context is set".into(),
            })?,
    };
    if !kubeconfig.contexts.iter().any(|c| c.name == name) {
        return Err(KubeconfigError::NoContext {
            origin: origin.to_owned(),
            reason: format!("no context named {name:?}"),
        });
    }
    let options = KubeConfigOptions {
        context: Some(name.clone()),
        ..KubeConfigOptions::default()
    };
    kube::Config::from_custom_kubeconfig(kubeconfig.clone(), &options)
        .await
        .map_err(|e| KubeconfigError::Client {
            origin: origin.to_owned(),
            context: name,
            reason: describe(&e),
        })
}

/// How long [`build_client`] waits by default: exec credential plugins run while a
/// client is built, and one that hangs must not hold a provider up forever.
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(30);

/// Builds a client from `config` (of context `context` of `origin`) with `options`
/// on a blocking thread, since kube runs an exec credential plugin, if any, while
/// building it, and gives up after `timeout`.
///
/// Every provider builds its clients here, so the [`ClientOptions`] it was given
/// apply to each cluster it builds, and to each one that replaces another. The
/// client connects only where `endpoints` allows, checked on every address it
/// connects to ([`ClientOptions::build_checked`]): pass the policy the kubeconfig
/// was vetted with.
///
/// # Errors
/// [`KubeconfigError::Client`], described by [`describe`]: never the
/// plugin's command line or output.
pub async fn build_client(
    config: kube::Config,
    options: &ClientOptions,
    endpoints: &EndpointPolicy,
    timeout: Duration,
    origin: &str,
    context: &str,
) -> Result<kube::Client, KubeconfigError> {
    let failed = |reason: String| KubeconfigError::Client {
        origin: origin.to_owned(),
        context: context.to_owned(),
        reason,
    };
    // Logs of the plugin run belong to the caller's subscriber and span.
    let dispatch = tracing::dispatcher::get_default(Clone::clone);
    let span = tracing::Span::current();
    let (options, endpoints) = (options.clone(), endpoints.clone());
    let building = tokio::task::spawn_blocking(move || {
        tracing::dispatcher::with_default(&dispatch, || {
            span.in_scope(|| options.build_checked(config, &endpoints))
        })
    });
    match tokio::time::timeout(timeout, building).await {
        Ok(Ok(Ok(client))) => Ok(client),
        Ok(Ok(Err(err))) => Err(failed(describe(&err))),
        Ok(Err(_)) => Err(failed("building the client panicked".into())),
        Err(_) => Err(failed(format!(
            "building the client took longer than {timeout:?} (is an exec credential plugin stuck?)"
        ))),
    }
}

/// A fingerprint of everything that decides how `context` connects: its cluster, its
/// user and its namespace. Two kubeconfigs with equal fingerprints for a context give
/// the same client, so a provider re-engages a cluster only when this changes. It is
/// a hash: it reveals nothing of the credentials.
pub fn fingerprint(kubeconfig: &Kubeconfig, context: &str) -> Option<u64> {
    let ctx = kubeconfig
        .contexts
        .iter()
        .find(|c| c.name == context)?
        .context
        .as_ref()?;
    let cluster = kubeconfig
        .clusters
        .iter()
        .find(|c| c.name == ctx.cluster)
        .and_then(|c| c.cluster.as_ref());
    let user = ctx
        .user
        .as_ref()
        .and_then(|u| kubeconfig.auth_infos.iter().find(|a| &a.name == u));
    let user = user.and_then(|a| a.auth_info.as_ref());
    let canonical = serde_json::json!({
        "cluster": cluster.map(serde_json::to_value).transpose().ok()?,
        "user": user.map(serde_json::to_value).transpose().ok()?,
        "namespace": ctx.namespace,
    });
    let mut hasher = DefaultHasher::new();
    canonical.to_string().hash(&mut hasher);
    Some(hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "s3cr3t-t0ken-value";

    fn kubeconfig(user: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: a\nclusters:\n- name: a\n  cluster:\n    server: https://127.0.0.1:6443\ncontexts:\n- name: a\n  context:\n    cluster: a\n    user: u\nusers:\n- name: u\n  user:\n{user}"
        )
    }

    fn token_user() -> String {
        format!("    token: {TOKEN}\n")
    }

    #[test]
    fn parses_and_fingerprints_a_token_kubeconfig() {
        let parsed = parse(kubeconfig(&token_user()).as_bytes(), "test").expect("valid");
        assert_eq!(context_names(&parsed), vec!["a"]);
        assert!(fingerprint(&parsed, "a").is_some());
        assert_eq!(fingerprint(&parsed, "missing"), None);
    }

    #[test]
    fn fingerprint_changes_with_credentials_only() {
        let one = parse(kubeconfig(&token_user()).as_bytes(), "t").expect("valid");
        let mut same = parse(kubeconfig(&token_user()).as_bytes(), "t").expect("valid");
        same.preferences = None;
        let other = parse(kubeconfig("    token: rotated\n").as_bytes(), "t").expect("valid");
        assert_eq!(fingerprint(&one, "a"), fingerprint(&same, "a"));
        assert_ne!(fingerprint(&one, "a"), fingerprint(&other, "a"));
    }

    #[test]
    fn syntax_errors_name_a_position_not_the_content() {
        let broken = format!("users: [ {{ token: {TOKEN} ");
        let err = parse(broken.as_bytes(), "Secret ns/x")
            .expect_err("broken YAML")
            .to_string();
        assert!(err.starts_with("Secret ns/x: not a valid kubeconfig"), "{err}");
        assert!(!err.contains(TOKEN), "{err}");
        let wrong_shape = format!("contexts: {TOKEN}\n");
        let err = parse(wrong_shape.as_bytes(), "f")
            .expect_err("not a kubeconfig")
            .to_string();
        assert!(!err.contains(TOKEN), "{err}");
        assert!(
            parse(b"  \n", "f")
                .expect_err("empty")
                .to_string()
                .contains("empty")
        );
        assert!(
            parse(b"kind: Config\n", "f")
                .expect_err("no contexts")
                .to_string()
                .contains("no contexts")
        );
    }

    #[test]
    fn exec_plugins_are_refused_unless_allowed() {
        let exec =
            "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: /bin/steal\n";
        let mut parsed = parse(kubeconfig(exec).as_bytes(), "Secret ns/x").expect("valid");
        let err = vet(&mut parsed, &KubeconfigPolicy::untrusted(), "Secret ns/x").expect_err("refused");
        let text = err.to_string();
        assert!(
            text.contains("users[0] asks to run an exec credential plugin (user.exec)")
                && text.contains("refused"),
            "{text}"
        );
        assert!(!text.contains("/bin/steal"), "{text}");
        vet(
            &mut parsed,
            &KubeconfigPolicy {
                allow_exec: true,
                ..Default::default()
            },
            "x",
        )
        .expect("allowed");
        let exec = parsed.auth_infos[0]
            .auth_info
            .as_ref()
            .and_then(|a| a.exec.as_ref())
            .expect("exec");
        assert!(matches!(exec.interactive_mode, Some(ExecInteractiveMode::Never)));
    }

    #[test]
    fn local_files_are_refused_unless_allowed() {
        let mut parsed = parse(kubeconfig("    tokenFile: /etc/shadow\n").as_bytes(), "s").expect("valid");
        let err = vet(&mut parsed, &KubeconfigPolicy::untrusted(), "s")
            .expect_err("refused")
            .to_string();
        assert!(err.contains("tokenFile") && !err.contains("/etc/shadow"), "{err}");
        vet(&mut parsed, &KubeconfigPolicy::trusted(), "s").expect("allowed");
    }

    fn with_cluster(fields: &str) -> Kubeconfig {
        let text = kubeconfig(&token_user()).replace(
            "    server: https://127.0.0.1:6443\n",
            &format!("    server: https://127.0.0.1:6443\n{fields}"),
        );
        parse(text.as_bytes(), "t").expect("valid")
    }

    #[test]
    fn proxies_and_skipped_tls_verification_are_refused_unless_allowed() {
        let mut proxied = with_cluster("    proxy-url: http://user:pr0xy-pa55@proxy.example:3128\n");
        let err = vet(&mut proxied, &KubeconfigPolicy::untrusted(), "Secret ns/x")
            .expect_err("refused")
            .to_string();
        assert_eq!(
            err,
            "Secret ns/x: clusters[0]: proxy-url is set; refused by rule allow_proxy_url \
             (off unless the operator enables it)"
        );
        let allowed = KubeconfigPolicy {
            allow_proxy_url: true,
            ..KubeconfigPolicy::untrusted()
        };
        vet(&mut proxied, &allowed, "s").expect("allowed");
        // An allowed proxy is held to the endpoint rules too, and never quoted whole.
        let fenced = allowed.endpoints(EndpointPolicy::any().allow(["127.0.0.1"]).unwrap());
        let err = vet(&mut proxied, &fenced, "s")
            .expect_err("not allowed")
            .to_string();
        assert!(
            err.contains("proxy-url host is not in the allow-list (1 entries)"),
            "{err}"
        );
        assert!(!err.contains("pa55") && !err.contains("proxy.example"), "{err}");

        let mut insecure = with_cluster("    insecure-skip-tls-verify: true\n");
        let err = vet(&mut insecure, &KubeconfigPolicy::untrusted(), "s")
            .expect_err("refused")
            .to_string();
        assert!(
            err.contains("insecure-skip-tls-verify is true; refused by rule allow_insecure_skip_tls_verify"),
            "{err}"
        );
        vet(&mut insecure, &KubeconfigPolicy::trusted(), "s").expect("allowed");
    }

    #[test]
    fn servers_are_held_to_the_endpoint_rules() {
        let mut local = with_cluster("");
        let fenced = KubeconfigPolicy::untrusted().endpoints(EndpointPolicy::deny_local());
        let err = vet(&mut local, &fenced, "Secret ns/x")
            .expect_err("denied")
            .to_string();
        assert_eq!(
            err,
            "Secret ns/x: clusters[0]: server host is in the deny-list entry 127.0.0.0/8; \
             refused by rule endpoints"
        );
        assert!(!err.contains(TOKEN));
        vet(&mut local, &KubeconfigPolicy::untrusted(), "s").expect("any server by default");
    }

    /// x03: an auth provider with a `cmd-path` runs a command when the client is
    /// built, so it needs `allow_exec`, whatever `allow_local_files` says; the
    /// refusal quotes neither the command nor the provider's settings.
    #[test]
    fn x03_an_auth_provider_that_runs_a_command_needs_allow_exec() {
        let user = r#"    auth-provider:
      name: gcp
      config:
        cmd-path: /usr/bin/x03-marker-command
        cmd-args: x03-marker-args
"#;
        let files_only = KubeconfigPolicy {
            allow_local_files: true,
            ..KubeconfigPolicy::untrusted()
        };
        let mut parsed = parse(kubeconfig(user).as_bytes(), "t").expect("valid");
        let refused = vet(&mut parsed, &files_only, "Secret ns/x03").expect_err("runs a command");
        let text = format!("{refused} {refused:?}");
        assert!(text.contains("runs a command (cmd-path)"), "{text}");
        assert!(
            text.contains("exec credential plugins are allowed only"),
            "{text}"
        );
        assert!(!text.contains("x03-marker"), "{text}");
        let exec_and_files = KubeconfigPolicy {
            allow_exec: true,
            ..files_only
        };
        let mut parsed = parse(kubeconfig(user).as_bytes(), "t").expect("valid");
        vet(&mut parsed, &exec_and_files, "Secret ns/x03").expect("allowed with both switches");
    }

    /// x06: a refusal names the entry by position, the field and the rule, and
    /// copies nothing the kubeconfig's writer chose: not the exec command, not an
    /// auth provider's name, not a server's or proxy's host, not an entry's name.
    #[test]
    fn x06_refusals_copy_no_command_provider_name_host_or_entry_name() {
        const MARKER: &str = "x06-marker";
        let config = |cluster: &str, user: &str| {
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: a\nclusters:\n- name: {MARKER}-cluster\n  cluster:\n{cluster}contexts:\n- name: a\n  context:\n    cluster: {MARKER}-cluster\n    user: {MARKER}-user\nusers:\n- name: {MARKER}-user\n  user:\n{user}"
            )
        };
        let server = |host: &str| format!("    server: https://{host}:6443\n");
        let fenced = KubeconfigPolicy {
            allow_proxy_url: true,
            ..KubeconfigPolicy::untrusted()
        }
        .endpoints(
            EndpointPolicy::deny_local()
                .deny(["*.internal"])
                .and_then(|p| p.allow(["10.0.0.0/8", "*.internal", "169.254.0.0/16", "*.example"]))
                .expect("rules"),
        );
        let token = "    token: t\n".to_owned();
        let cases = [
            (
                config(
                    &server("10.0.0.1"),
                    &format!(
                        "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: /bin/{MARKER}-command\n"
                    ),
                ),
                "users[0] asks to run an exec credential plugin (user.exec); refused",
            ),
            (
                config(
                    &server("10.0.0.1"),
                    &format!("    auth-provider:\n      name: {MARKER}-provider\n"),
                ),
                "users[0] uses an auth provider (user.auth-provider); refused",
            ),
            (
                config(&server(&format!("{MARKER}.internal")), &token),
                "clusters[0]: server host is in the deny-list entry *.internal; refused by rule endpoints",
            ),
            (
                config(&server("169.254.169.254"), &token),
                "clusters[0]: server host is in the deny-list entry 169.254.0.0/16; refused by rule endpoints",
            ),
            (
                config(&server(&format!("{MARKER}.corp")), &token),
                "clusters[0]: server host is not in the allow-list (4 entries); refused by rule endpoints",
            ),
            (
                config(&server(&format!("{MARKER}.0x10")), &token),
                "clusters[0]: server host is not a canonical IP address or DNS name; refused by rule endpoints",
            ),
            (
                config(
                    &format!(
                        "{}    proxy-url: http://{MARKER}-proxy.corp:3128\n",
                        server("10.0.0.1")
                    ),
                    &token,
                ),
                "clusters[0]: proxy-url host is not in the allow-list (4 entries); refused by rule endpoints",
            ),
            (
                config(
                    &format!(
                        "{}    certificate-authority: /etc/{MARKER}-ca\n",
                        server("10.0.0.1")
                    ),
                    &token,
                ),
                "clusters[0] reads certificate-authority from a local file; refused",
            ),
        ];
        for (text, expected) in cases {
            let mut parsed = parse(text.as_bytes(), "Secret ns/x06").expect("valid");
            let refused = vet(&mut parsed, &fenced, "Secret ns/x06").expect_err(expected);
            let shown = format!("{refused} {refused:?}");
            assert!(
                refused.to_string().starts_with("Secret ns/x06: ") && shown.contains(expected),
                "{shown}"
            );
            assert!(!shown.contains(MARKER), "{shown}");
            assert!(!shown.contains("169.254.169.254"), "{shown}");
        }
    }

    #[tokio::test]
    async fn client_config_of_a_context() {
        let parsed = parse(kubeconfig(&token_user()).as_bytes(), "t").expect("valid");
        let config = client_config(&parsed, None, "t").await.expect("config");
        assert_eq!(config.cluster_url.to_string(), "https://127.0.0.1:6443/");
        let err = client_config(&parsed, Some("b"), "t")
            .await
            .expect_err("no such context");
        assert!(err.to_string().contains("no context named \"b\""), "{err}");
    }

    /// A runtime for the client-building step of the fuzz target.
    fn runtime() -> &'static tokio::runtime::Runtime {
        static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
        RUNTIME.get_or_init(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
        })
    }

    /// x08: what vetting let through is what the policy allows, judged by oracles
    /// written apart from the vetting code: no command unless exec is allowed (an
    /// exec plugin, or an auth provider with `cmd-path`), and under a deny-list of
    /// local addresses no server a resolver would read as local.
    fn vetted_kubeconfig_holds_to(kubeconfig: &Kubeconfig, policy: &KubeconfigPolicy) {
        use crate::providers::fuzz::{is_local, is_local_name, lenient_addresses};
        if !policy.allow_exec {
            for user in kubeconfig.auth_infos.iter().filter_map(|u| u.auth_info.as_ref()) {
                assert!(user.exec.is_none(), "an exec plugin passed without allow_exec");
                let runs_command = user
                    .auth_provider
                    .as_ref()
                    .is_some_and(|p| p.config.contains_key("cmd-path"));
                assert!(
                    !runs_command,
                    "an auth provider with cmd-path passed without allow_exec"
                );
            }
        }
        if policy.endpoints.denied().is_empty() {
            return;
        }
        for cluster in kubeconfig.clusters.iter().filter_map(|c| c.cluster.as_ref()) {
            let Some(host) = cluster
                .server
                .as_deref()
                .and_then(|s| s.trim().parse::<http::Uri>().ok())
                .and_then(|uri| uri.host().map(str::to_owned))
            else {
                continue;
            };
            let read_as = lenient_addresses(&host);
            assert!(
                !read_as.iter().copied().any(is_local),
                "server {host} reaches {read_as:?}"
            );
            assert!(!is_local_name(&host), "server {host} is a local name");
        }
    }

    /// Everything a provider does with an untrusted kubeconfig, short of
    /// connecting: parse, vet, name contexts, fingerprint, build a client
    /// configuration and a client. No step may panic, and no error may quote a
    /// credential.
    fn untrusted_kubeconfig_journey(bytes: &[u8], policy: &KubeconfigPolicy) {
        use crate::providers::fuzz::assert_no_marker;
        let mut kubeconfig = match parse(bytes, "Secret ns/fuzz") {
            Ok(kubeconfig) => kubeconfig,
            Err(error) => {
                assert_no_marker("parse", &error.to_string());
                return assert_no_marker("parse (Debug)", &format!("{error:?}"));
            }
        };
        for context in context_names(&kubeconfig) {
            let _ = fingerprint(&kubeconfig, &context);
        }
        if let Err(error) = vet(&mut kubeconfig, policy, "Secret ns/fuzz") {
            assert_no_marker("vet", &error.to_string());
            return assert_no_marker("vet (Debug)", &format!("{error:?}"));
        }
        vetted_kubeconfig_holds_to(&kubeconfig, policy);
        let has_exec = kubeconfig
            .auth_infos
            .iter()
            .any(|a| a.auth_info.as_ref().is_some_and(|a| a.exec.is_some()));
        runtime().block_on(async {
            match client_config(&kubeconfig, None, "Secret ns/fuzz").await {
                Err(error) => assert_no_marker("client_config", &error.to_string()),
                // Building runs an exec plugin: not here.
                Ok(_) if has_exec => {}
                Ok(config) => {
                    let options = ClientOptions::default();
                    if let Err(error) = options.build_checked(config, &policy.endpoints) {
                        assert_no_marker("client", &crate::redact::describe(&error));
                    }
                }
            }
        });
    }

    proptest::proptest! {
        #![proptest_config(crate::providers::fuzz::config())]

        #[test]
        fn p05_fuzz_kubeconfig(
            bytes in crate::providers::fuzz::kubeconfig_bytes(),
            allow in proptest::prelude::any::<(bool, bool, bool, bool)>(),
            fenced in proptest::prelude::any::<bool>(),
        ) {
            let (allow_exec, allow_local_files, allow_proxy_url, allow_insecure_skip_tls_verify) = allow;
            let endpoints = if fenced {
                EndpointPolicy::deny_local().allow(["10.0.0.0/8", "*.example.com"]).expect("rules")
            } else {
                EndpointPolicy::any()
            };
            let policy = KubeconfigPolicy {
                allow_exec,
                allow_local_files,
                allow_proxy_url,
                allow_insecure_skip_tls_verify,
                endpoints,
            };
            untrusted_kubeconfig_journey(&bytes, &policy);
        }

        /// x08: the same journey, always under the deny-list of local addresses,
        /// with its outcome checked (`vetted_kubeconfig_holds_to`).
        #[test]
        fn x08_fuzz_vetted_kubeconfigs_hold_to_their_policy(
            bytes in crate::providers::fuzz::kubeconfig_bytes(),
            allow_exec in proptest::prelude::any::<bool>(),
        ) {
            let policy = KubeconfigPolicy {
                allow_exec,
                allow_local_files: true,
                ..KubeconfigPolicy::untrusted().endpoints(EndpointPolicy::deny_local())
            };
            untrusted_kubeconfig_journey(&bytes, &policy);
        }
    }
}
