//! A server's certificate (the metrics endpoint's, the webhook server's): generated
//! at start, or read from files and read again when they change.
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

/// How often a self-signed certificate is replaced by a new one from the same
/// authority, unless [`ServingCertificate::rotate_every`] says otherwise. Each is
/// valid for twice as long, so clients never meet an expired one.
pub const DEFAULT_ROTATION: Duration = Duration::from_secs(24 * 60 * 60);

/// How often certificate files are checked for a change, unless
/// [`ServingCertificate::reload_interval`] says otherwise (controller-runtime's
/// certificate watcher polls as often).
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// Where the metrics endpoint's TLS certificate comes from; see
/// [`MetricsEndpoint::certificate`](crate::manager::MetricsEndpoint::certificate).
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
    SelfSigned {
        rotate_every: Duration,
        names: Vec<String>,
    },
    Files {
        cert: PathBuf,
        key: PathBuf,
        reload_interval: Duration,
    },
}

impl ServingCertificate {
    /// A certificate authority generated when the server starts, and a certificate
    /// it signs for `localhost`, `127.0.0.1` and `::1` (and the
    /// [names](Self::names) given), replaced by a new one every
    /// [`rotate_every`](Self::rotate_every) (a day by default). The keys (ECDSA
    /// P-256) are kept in memory only; the authority lives as long as the server.
    ///
    /// Scrapers of the metrics cannot verify it; it keeps tokens and metrics off the
    /// wire in clear where the scraper is configured to skip verification (as
    /// controller-runtime's default for its secure metrics). The webhook server
    /// gives the authority to the apiservers it wires as their CA bundle.
    pub fn self_signed() -> Self {
        ServingCertificate {
            source: Source::SelfSigned {
                rotate_every: DEFAULT_ROTATION,
                names: Vec::new(),
            },
        }
    }

    /// How often a [self-signed](Self::self_signed) certificate is replaced by a new
    /// one from the same authority (default [`DEFAULT_ROTATION`]); at least 1 s.
    /// No effect on certificate files.
    #[must_use]
    pub fn rotate_every(mut self, interval: Duration) -> Self {
        if let Source::SelfSigned { rotate_every, .. } = &mut self.source {
            *rotate_every = interval.max(Duration::from_secs(1));
        }
        self
    }

    /// More names (DNS names or IP addresses) a [self-signed](Self::self_signed)
    /// certificate is valid for, besides `localhost`, `127.0.0.1` and `::1`: e.g.
    /// the webhook Service's `name.namespace.svc`. No effect on certificate files.
    #[must_use]
    pub fn names<S: Into<String>>(mut self, more: impl IntoIterator<Item = S>) -> Self {
        if let Source::SelfSigned { names, .. } = &mut self.source {
            names.extend(more.into_iter().map(Into::into));
        }
        self
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

/// What serving a certificate takes: the TLS configuration for the acceptor, the
/// watcher to run beside the server (it reloads files, or rotates a self-signed
/// certificate), and for a self-signed one, the authority clients must trust (PEM).
pub(crate) struct Loaded {
    pub config: Arc<ServerConfig>,
    pub watcher: Option<Watcher>,
    // Read by the webhook server (its CA bundle); the endpoints need no bundle.
    #[cfg_attr(not(feature = "webhook"), allow(dead_code))]
    pub authority: Option<String>,
}

/// Loads `certificate`: generates it, or reads the files once.
///
/// # Errors
/// A message naming the file and what is wrong with it (never its content).
pub(crate) fn load(certificate: &ServingCertificate, alpn: &[&[u8]]) -> Result<Loaded, String> {
    let provider = Arc::new(super::crypto_provider());
    let (key, renewal, authority) = match &certificate.source {
        Source::SelfSigned { rotate_every, names } => {
            let authority = Authority::new(names.clone())?;
            let key = authority.issue(&provider, *rotate_every)?;
            let pem = authority.issuer.pem();
            (key, Renewal::Rotate(Box::new(authority)), Some(pem))
        }
        Source::Files { cert, key, .. } => {
            let (cert_pem, key_pem) = read_pair(cert, key)?;
            let certified = certified(&provider, cert, &cert_pem, &key_pem)?;
            (certified, Renewal::Reload((cert_pem, key_pem)), None)
        }
    };
    let current = Arc::new(Current(RwLock::new(Arc::new(key))));
    let mut config = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|err| format!("TLS setup: {err}"))?
        .with_no_client_auth()
        .with_cert_resolver(current.clone());
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let watcher = Watcher {
        source: certificate.source.clone(),
        renewal,
        provider,
        current,
    };
    Ok(Loaded {
        config: Arc::new(config),
        watcher: Some(watcher),
        authority,
    })
}

/// The names every self-signed certificate is valid for.
const LOCAL_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// A certificate authority of the server's own, in memory for as long as it runs.
struct Authority {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    /// What its certificates are valid for.
    names: Vec<String>,
}

impl Authority {
    fn new(more: Vec<String>) -> Result<Self, String> {
        let failed = |err: rcgen::Error| format!("cannot generate a certificate authority: {err}");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "multicluster-runtime self-signed CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().map_err(failed)?;
        let issuer = rcgen::CertifiedIssuer::self_signed(params, key).map_err(failed)?;
        let mut names: Vec<String> = LOCAL_NAMES.map(String::from).to_vec();
        names.extend(more);
        Ok(Authority { issuer, names })
    }

    /// A new serving certificate, valid from an hour ago (clocks differ) for twice
    /// `rotate_every`, so that it is replaced long before it expires.
    fn issue(&self, provider: &CryptoProvider, rotate_every: Duration) -> Result<CertifiedKey, String> {
        let failed = |err: rcgen::Error| format!("cannot generate a serving certificate: {err}");
        let mut params = rcgen::CertificateParams::new(self.names.clone()).map_err(failed)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "multicluster-runtime");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let at = |since_epoch: Duration| {
            time::OffsetDateTime::UNIX_EPOCH
                + time::Duration::seconds(since_epoch.as_secs().try_into().unwrap_or(i64::MAX / 2))
        };
        params.not_before = at(now.saturating_sub(Duration::from_secs(3600)));
        params.not_after = at(now + rotate_every * 2);
        let key = rcgen::KeyPair::generate().map_err(failed)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(failed)?;
        let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        CertifiedKey::from_der(vec![cert.der().clone()], private, provider)
            .map_err(|err| format!("cannot use the self-signed certificate: {err}"))
    }
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

/// How the certificate in service is renewed.
enum Renewal {
    /// A new one from this authority every interval.
    Rotate(Box<Authority>),
    /// The files read again every interval; the pair last read, usable or not (a bad
    /// pair is reported once).
    Reload((Vec<u8>, Vec<u8>)),
}

/// Renews the certificate in service: reads the files again every interval and
/// serves a changed pair, or issues a new self-signed one.
pub(crate) struct Watcher {
    source: Source,
    renewal: Renewal,
    provider: Arc<CryptoProvider>,
    current: Arc<Current>,
}

impl Watcher {
    /// Renews until `token` is cancelled.
    pub async fn run(mut self, token: CancellationToken) {
        let interval = match &self.source {
            Source::SelfSigned { rotate_every, .. } => *rotate_every,
            Source::Files { reload_interval, .. } => *reload_interval,
        };
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            self.renew(interval);
        }
    }

    fn renew(&mut self, interval: Duration) {
        let (cert, key, last) = match (&self.source, &mut self.renewal) {
            (_, Renewal::Rotate(authority)) => {
                match authority.issue(&self.provider, interval) {
                    Ok(key) => {
                        self.current.set(Arc::new(key));
                        tracing::debug!("self-signed serving certificate rotated");
                    }
                    Err(reason) => tracing::warn!(
                        reason,
                        "self-signed serving certificate not rotated; the previous one stays"
                    ),
                }
                return;
            }
            (Source::Files { cert, key, .. }, Renewal::Reload(last)) => (cert, key, last),
            (Source::SelfSigned { .. }, Renewal::Reload(_)) => return,
        };
        let pair = match read_pair(cert, key) {
            Ok(pair) => pair,
            Err(reason) => {
                // E.g. a Secret volume between two versions: try again next time.
                tracing::debug!(reason, "serving certificate not read; the previous one stays");
                return;
            }
        };
        if pair == *last {
            return;
        }
        match certified(&self.provider, cert, &pair.0, &pair.1) {
            Ok(certified) => {
                self.current.set(Arc::new(certified));
                tracing::info!(cert = %cert.display(), "serving certificate reloaded");
            }
            Err(reason) => tracing::warn!(
                cert = %cert.display(),
                reason,
                "changed serving certificate not usable; the previous one stays"
            ),
        }
        *last = pair;
    }
}
