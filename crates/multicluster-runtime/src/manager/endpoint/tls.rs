//! The metrics endpoint's serving certificate: generated at start, or read from files
//! and read again when they change.
//!
//! The handshake takes whatever certificate is current ([`Current`], a rustls
//! `ResolvesServerCert`); a task of the manager's polls the files every
//! [reload interval](ServingCertificate::reload_interval) and swaps in the new pair
//! once it parses and its key matches the certificate. A pair that does not (a
//! rotation caught half-way, a broken file) is logged and the previous one stays in
//! service, so a bad rotation never takes the endpoint down.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_util::sync::CancellationToken;

/// How often certificate files are checked for a change, unless
/// [`ServingCertificate::reload_interval`] says otherwise (controller-runtime's
/// certificate watcher polls as often).
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// Where the metrics endpoint's TLS certificate comes from; see
/// [`MetricsEndpoint::certificate`](super::MetricsEndpoint::certificate).
///
/// ```
/// use std::time::Duration;
/// use multicluster_runtime::manager::ServingCertificate;
///
/// // A Secret of type kubernetes.io/tls mounted at /certs (cert-manager writes one).
/// let files = ServingCertificate::files("/certs/tls.crt", "/certs/tls.key")
///     .reload_interval(Duration::from_secs(30));
/// let generated = ServingCertificate::self_signed();
/// # let _ = (files, generated);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServingCertificate {
    source: Source,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Source {
    SelfSigned,
    Files {
        cert: PathBuf,
        key: PathBuf,
        reload_interval: Duration,
    },
}

impl ServingCertificate {
    /// A certificate generated when the manager starts, for `localhost`,
    /// `127.0.0.1` and `::1`, with a new key (ECDSA P-256) kept in memory only.
    /// Clients cannot verify it; it keeps tokens and metrics off the wire in clear
    /// where the scraper is configured to skip verification (as controller-runtime's
    /// default for its secure metrics).
    pub fn self_signed() -> Self {
        ServingCertificate {
            source: Source::SelfSigned,
        }
    }

    /// A certificate chain (PEM, the server's certificate first) and its private key
    /// (PEM: PKCS#8, PKCS#1 or SEC1), read when the manager starts (which fails with
    /// [`Error::Endpoint`](crate::Error::Endpoint) if they cannot be used) and read
    /// again every [`reload_interval`](Self::reload_interval) (10 s by default): a
    /// changed pair is served from the next handshake on.
    pub fn files(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        ServingCertificate {
            source: Source::Files {
                cert: cert.into(),
                key: key.into(),
                reload_interval: DEFAULT_RELOAD_INTERVAL,
            },
        }
    }

    /// How often the files are checked for a change (default
    /// [`DEFAULT_RELOAD_INTERVAL`]); at least 10 ms. No effect on a self-signed
    /// certificate.
    #[must_use]
    pub fn reload_interval(mut self, interval: Duration) -> Self {
        if let Source::Files { reload_interval, .. } = &mut self.source {
            *reload_interval = interval.max(Duration::from_millis(10));
        }
        self
    }
}

/// The certificate handshakes get now.
#[derive(Debug)]
pub(crate) struct Current(RwLock<Arc<CertifiedKey>>);

impl Current {
    fn get(&self) -> Arc<CertifiedKey> {
        self.0.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn set(&self, key: Arc<CertifiedKey>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = key;
    }
}

impl ResolvesServerCert for Current {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

/// What serving a certificate takes: the TLS configuration for the acceptor, and
/// for files, the watcher to run beside the endpoint.
pub(crate) struct Loaded {
    pub config: Arc<ServerConfig>,
    pub watcher: Option<Watcher>,
}

/// Loads `certificate`: generates it, or reads the files once.
///
/// # Errors
/// A message naming the file and what is wrong with it (never its content).
pub(crate) fn load(certificate: &ServingCertificate) -> Result<Loaded, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (key, watcher) = match &certificate.source {
        Source::SelfSigned => (self_signed(&provider)?, None),
        Source::Files {
            cert,
            key,
            reload_interval,
        } => {
            let (cert_pem, key_pem) = read_pair(cert, key)?;
            let certified = certified(&provider, cert, &cert_pem, &key_pem)?;
            let watcher = Watcher {
                cert: cert.clone(),
                key: key.clone(),
                interval: *reload_interval,
                last: (cert_pem, key_pem),
                provider: provider.clone(),
                current: None,
            };
            (certified, Some(watcher))
        }
    };
    let current = Arc::new(Current(RwLock::new(Arc::new(key))));
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| format!("TLS setup: {err}"))?
        .with_no_client_auth()
        .with_cert_resolver(current.clone());
    // The endpoint speaks HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let watcher = watcher.map(|w| Watcher {
        current: Some(current),
        ..w
    });
    Ok(Loaded {
        config: Arc::new(config),
        watcher,
    })
}

fn self_signed(provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let names = ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
    let generated = rcgen::generate_simple_self_signed(names)
        .map_err(|err| format!("cannot generate a self-signed certificate: {err}"))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(generated.signing_key.serialize_der()));
    CertifiedKey::from_der(vec![generated.cert.der().clone()], key, provider)
        .map_err(|err| format!("cannot use the self-signed certificate: {err}"))
}

fn read_pair(cert: &Path, key: &Path) -> Result<(Vec<u8>, Vec<u8>), String> {
    let read = |path: &Path, what: &str| {
        std::fs::read(path).map_err(|err| format!("cannot read the {what} {}: {err}", path.display()))
    };
    Ok((read(cert, "certificate")?, read(key, "private key")?))
}

/// The pair as rustls serves it; errors name the certificate file only.
fn certified(
    provider: &CryptoProvider,
    cert: &Path,
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("{} is not a PEM certificate chain: {err}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{} holds no certificate", cert.display()));
    }
    // The key's parse error is not quoted: it could describe the key's bytes.
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|_| format!("the private key for {} is not a PEM private key", cert.display()))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|err| {
        format!(
            "the private key does not fit the certificate {} or is not supported: {err}",
            cert.display()
        )
    })
}

/// Reads the certificate files again every interval, and serves a changed pair.
pub(crate) struct Watcher {
    cert: PathBuf,
    key: PathBuf,
    interval: Duration,
    /// The pair last read, usable or not: a bad pair is reported once.
    last: (Vec<u8>, Vec<u8>),
    provider: Arc<CryptoProvider>,
    current: Option<Arc<Current>>,
}

impl Watcher {
    /// Polls until `token` is cancelled.
    pub async fn run(mut self, token: CancellationToken) {
        let Some(current) = self.current.take() else {
            return;
        };
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep(self.interval) => {}
            }
            let pair = match read_pair(&self.cert, &self.key) {
                Ok(pair) => pair,
                Err(reason) => {
                    // E.g. a Secret volume between two versions: try again next time.
                    tracing::debug!(reason, "serving certificate not read; the previous one stays");
                    continue;
                }
            };
            if pair == self.last {
                continue;
            }
            match certified(&self.provider, &self.cert, &pair.0, &pair.1) {
                Ok(key) => {
                    current.set(Arc::new(key));
                    tracing::info!(cert = %self.cert.display(), "serving certificate reloaded");
                }
                Err(reason) => tracing::warn!(
                    cert = %self.cert.display(),
                    reason,
                    "changed serving certificate not usable; the previous one stays"
                ),
            }
            self.last = pair;
        }
    }
}
