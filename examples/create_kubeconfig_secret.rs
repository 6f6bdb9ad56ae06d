//! Registers a fleet cluster with the `operator` example: creates the kubeconfig
//! Secret the operator reads, from a ServiceAccount token of the member cluster
//! (as Go multicluster-runtime's `create-kubeconfig-secret.sh` does).
//!
//!     kubectl --context eu-1 apply -k deploy/operator/member
//!     cargo run -p examples --example create_kubeconfig_secret -- \
//!         --name eu-1 --member-context eu-1 --hub-context hub
//!
//! It reads the member's server and CA from its kubeconfig context, asks the
//! member's apiserver for a token of the ServiceAccount
//! `fleet-system/fleet-operator-member` (made by `deploy/operator/member`; the tool
//! does not create it, so the member's RBAC stays in the manifests), builds a
//! kubeconfig of that server, CA and token, and applies it to the hub as the Secret
//! `<name>` in `fleet-system`, labelled `sigs.k8s.io/multicluster-runtime-kubeconfig=true`,
//! under the key `kubeconfig`. Run it again to renew the token; the operator picks
//! up the changed Secret. The token is never printed.
//!
//! # Why a TokenRequest, with an expiry
//!
//! The token comes from the TokenRequest API, valid for `--expiration-hours`
//! (default 720: 30 days; the apiserver may shorten it, up to its
//! `--service-account-max-token-expiration`). The alternative, a
//! `kubernetes.io/service-account-token` Secret in the member, never expires and
//! needs the member's token controller to fill it in; Kubernetes recommends
//! against it. An expiring token limits what a leaked kubeconfig Secret is worth;
//! the price is renewing it (run this again, e.g. from a CronJob, well before it
//! expires). Deleting the ServiceAccount revokes every token at once.

use std::path::PathBuf;

use anyhow::Context as _;
use base64::Engine as _;
use clap::Parser;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use multicluster_runtime::providers::secret::kubeconfig_secret;

/// The tool's command line.
#[derive(Parser, Debug, Clone)]
#[command(about = "Creates the kubeconfig Secret of a fleet cluster from a ServiceAccount token")]
pub struct Args {
    /// The cluster's name in the fleet, and its Secret's.
    #[arg(long)]
    pub name: String,
    /// The member's kubeconfig file [default: $KUBECONFIG, else ~/.kube/config].
    #[arg(long)]
    pub member_kubeconfig: Option<PathBuf>,
    /// The member's context [default: the file's current context].
    #[arg(long)]
    pub member_context: Option<String>,
    /// The server the operator is to reach the member at [default: the context's].
    #[arg(long)]
    pub member_server: Option<String>,
    /// The hub's (the operator's own cluster's) kubeconfig file [default:
    /// $KUBECONFIG, else ~/.kube/config].
    #[arg(long)]
    pub hub_kubeconfig: Option<PathBuf>,
    /// The hub's context [default: the file's current context].
    #[arg(long)]
    pub hub_context: Option<String>,
    /// The hub's namespace of kubeconfig Secrets (the operator's --secrets-namespace).
    #[arg(long, default_value = "fleet-system")]
    pub namespace: String,
    /// The member's ServiceAccount, `namespace/name` (deploy/operator/member).
    #[arg(long, default_value = "fleet-system/fleet-operator-member")]
    pub service_account: String,
    /// How long the token is valid, in hours.
    #[arg(long, default_value_t = 720)]
    pub expiration_hours: i64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    examples::init_tracing();
    let args = Args::parse();
    let member = read_kubeconfig(args.member_kubeconfig.as_ref())?;
    let hub = read_kubeconfig(args.hub_kubeconfig.as_ref())?;
    let member_client = client(&member, args.member_context.as_deref()).await?;
    let hub_client = client(&hub, args.hub_context.as_deref()).await?;
    let target = Target::new(&args)?;
    let endpoint = MemberEndpoint::from_kubeconfig(&member, args.member_context.as_deref())?;
    let endpoint = match &args.member_server {
        Some(server) => MemberEndpoint {
            server: server.clone(),
            ..endpoint
        },
        None => endpoint,
    };
    let expiry = create(&member_client, &endpoint, &hub_client, &target).await?;
    println!(
        "Secret {}/{} written (server {}, token of {}/{} valid until {})",
        target.namespace,
        target.name,
        endpoint.server,
        target.account_namespace,
        target.account,
        expiry.as_deref().unwrap_or("unknown")
    );
    Ok(())
}

/// What to create: the Secret and the ServiceAccount whose token goes into it.
#[derive(Debug, Clone)]
pub struct Target {
    /// The cluster's name, and its Secret's.
    pub name: String,
    /// The hub's namespace of kubeconfig Secrets.
    pub namespace: String,
    /// The member's ServiceAccount's namespace.
    pub account_namespace: String,
    /// The member's ServiceAccount's name.
    pub account: String,
    /// The token's lifetime, in seconds.
    pub expiration_seconds: i64,
}

impl Target {
    /// From the command line.
    ///
    /// # Errors
    /// `--service-account` is not `namespace/name`, or the expiry is not positive.
    pub fn new(args: &Args) -> anyhow::Result<Self> {
        let Some((account_namespace, account)) = args.service_account.split_once('/') else {
            anyhow::bail!(
                "--service-account {:?}: expected namespace/name",
                args.service_account
            );
        };
        anyhow::ensure!(args.expiration_hours > 0, "--expiration-hours must be positive");
        Ok(Target {
            name: args.name.clone(),
            namespace: args.namespace.clone(),
            account_namespace: account_namespace.to_owned(),
            account: account.to_owned(),
            expiration_seconds: args.expiration_hours * 3600,
        })
    }
}

/// Where the operator reaches a member: its server and the CA that signs the
/// server's certificate (PEM, base64-encoded as in a kubeconfig).
#[derive(Debug, Clone)]
pub struct MemberEndpoint {
    /// The apiserver's URL.
    pub server: String,
    /// `certificate-authority-data`: none for a server with a publicly trusted
    /// certificate.
    pub certificate_authority_data: Option<String>,
}

impl MemberEndpoint {
    /// The server and CA of `context` (or the current context) of `kubeconfig`; a CA
    /// file is read and inlined.
    ///
    /// # Errors
    /// The context or its cluster is missing, has no server, skips TLS
    /// verification, or its CA file cannot be read.
    pub fn from_kubeconfig(kubeconfig: &Kubeconfig, context: Option<&str>) -> anyhow::Result<Self> {
        let context_name = context
            .map(str::to_owned)
            .or_else(|| kubeconfig.current_context.clone())
            .context("the member's kubeconfig has no current context: give --member-context")?;
        let cluster_name = kubeconfig
            .contexts
            .iter()
            .find(|c| c.name == context_name)
            .and_then(|c| c.context.as_ref())
            .map(|c| c.cluster.clone())
            .with_context(|| format!("the member's kubeconfig has no context {context_name:?}"))?;
        let cluster = kubeconfig
            .clusters
            .iter()
            .find(|c| c.name == cluster_name)
            .and_then(|c| c.cluster.as_ref())
            .with_context(|| format!("the member's kubeconfig has no cluster {cluster_name:?}"))?;
        anyhow::ensure!(
            cluster.insecure_skip_tls_verify != Some(true),
            "cluster {cluster_name:?} skips TLS verification; the operator refuses such kubeconfigs"
        );
        let server = cluster
            .server
            .clone()
            .with_context(|| format!("cluster {cluster_name:?} has no server"))?;
        let certificate_authority_data = match (
            &cluster.certificate_authority_data,
            &cluster.certificate_authority,
        ) {
            (Some(data), _) => Some(data.clone()),
            (None, Some(path)) => {
                let pem = std::fs::read(path)
                    .with_context(|| format!("{path}: the CA of cluster {cluster_name:?}"))?;
                Some(base64::engine::general_purpose::STANDARD.encode(pem))
            }
            (None, None) => None,
        };
        Ok(MemberEndpoint {
            server,
            certificate_authority_data,
        })
    }
}

/// Requests a token of the member's ServiceAccount and applies the kubeconfig
/// Secret of `endpoint` with that token to the hub. Returns when the token
/// expires (RFC 3339), as the apiserver says.
///
/// # Errors
/// The ServiceAccount does not exist (apply `deploy/operator/member` first), the
/// caller may not request its token, or the Secret cannot be written.
pub async fn create(
    member: &kube::Client,
    endpoint: &MemberEndpoint,
    hub: &kube::Client,
    target: &Target,
) -> anyhow::Result<Option<String>> {
    let accounts: Api<ServiceAccount> = Api::namespaced(member.clone(), &target.account_namespace);
    let account = format!("{}/{}", target.account_namespace, target.account);
    if accounts.get_opt(&target.account).await?.is_none() {
        anyhow::bail!("the member has no ServiceAccount {account}: apply deploy/operator/member to it first");
    }
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(target.expiration_seconds),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let issued = accounts
        .create_token_request(&target.account, &PostParams::default(), &request)
        .await
        .with_context(|| format!("a token of {account}"))?;
    let status = issued.status.context("the TokenRequest has no status")?;
    let expiry = status.expiration_timestamp.map(|t| t.0.to_string());
    let token = status.token.context("the TokenRequest gave no token")?;
    let kubeconfig = token_kubeconfig(&target.name, endpoint, &token)?;
    let secret = kubeconfig_secret(&target.name, &target.namespace, &kubeconfig);
    let secrets: Api<Secret> = Api::namespaced(hub.clone(), &target.namespace);
    let params = PatchParams::apply("create-kubeconfig-secret").force();
    secrets
        .patch(&target.name, &params, &Patch::Apply(&secret))
        .await
        .with_context(|| {
            format!(
                "applying the Secret {}/{} to the hub",
                target.namespace, target.name
            )
        })?;
    Ok(expiry)
}

/// A kubeconfig of one cluster, `name`, reached at `endpoint` with the bearer
/// `token`.
///
/// # Errors
/// Never for a valid endpoint; the error does not quote the token.
pub fn token_kubeconfig(name: &str, endpoint: &MemberEndpoint, token: &str) -> anyhow::Result<Kubeconfig> {
    // Through JSON: the token field is a secret type that redacts itself in Debug.
    let value = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": name, "cluster": {
            "server": endpoint.server,
            "certificate-authority-data": endpoint.certificate_authority_data,
        }}],
        "users": [{ "name": name, "user": { "token": token } }],
        "contexts": [{ "name": name, "context": { "cluster": name, "user": name } }],
        "current-context": name,
    });
    // The error of a failed conversion could quote the token: it is not passed on.
    serde_json::from_value(value).map_err(|_| anyhow::anyhow!("building the kubeconfig of {name:?} failed"))
}

/// `path`, or the default kubeconfig ($KUBECONFIG, else ~/.kube/config).
fn read_kubeconfig(path: Option<&PathBuf>) -> anyhow::Result<Kubeconfig> {
    match path {
        Some(path) => Kubeconfig::read_from(path).with_context(|| format!("{}", path.display())),
        None => Ok(Kubeconfig::read()?),
    }
}

/// A client of `context` (or the current context) of `kubeconfig`.
async fn client(kubeconfig: &Kubeconfig, context: Option<&str>) -> anyhow::Result<kube::Client> {
    let options = KubeConfigOptions {
        context: context.map(str::to_owned),
        ..KubeConfigOptions::default()
    };
    let config = kube::Config::from_custom_kubeconfig(kubeconfig.clone(), &options).await?;
    Ok(kube::Client::try_from(config)?)
}
