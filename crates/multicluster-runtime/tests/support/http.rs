//! A minimal HTTP/1.1 GET, plain or over TLS, enough to read the manager's
//! endpoints in tests.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response: status code, content type, body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

/// GETs `path` (with its query) from `address`; panics on I/O errors.
pub async fn get(address: SocketAddr, path: &str) -> Response {
    let stream = TcpStream::connect(address).await.expect("connect to endpoint");
    exchange(stream, address, path, None)
        .await
        .expect("plain exchange")
}

/// GETs `path` from `address` over TLS as `client` (see [`trusting`],
/// [`accepting_any`]) for the server name `localhost`, with `Authorization: Bearer
/// <token>` if a token is given. An I/O or TLS error is returned, for tests that
/// expect one.
pub async fn get_tls(
    address: SocketAddr,
    path: &str,
    token: Option<&str>,
    client: Arc<ClientConfig>,
) -> std::io::Result<Response> {
    let stream = TcpStream::connect(address).await?;
    let connector = tokio_rustls::TlsConnector::from(client);
    let name = ServerName::try_from("localhost").expect("server name");
    let stream = connector.connect(name, stream).await?;
    exchange(stream, address, path, token).await
}

/// POSTs a JSON `body` to `path` at `address` over TLS as `client`, for the server
/// name `localhost`.
#[allow(dead_code)] // not every test binary posts
pub async fn post_json_tls(
    address: SocketAddr,
    path: &str,
    body: &str,
    client: Arc<ClientConfig>,
) -> std::io::Result<Response> {
    let stream = TcpStream::connect(address).await?;
    let connector = tokio_rustls::TlsConnector::from(client);
    let name = ServerName::try_from("localhost").expect("server name");
    let mut stream = connector.connect(name, stream).await?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    read_response(stream).await
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    address: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> std::io::Result<Response> {
    let authorization = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {address}\r\n{authorization}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    read_response(stream).await
}

async fn read_response<S: AsyncRead + Unpin>(mut stream: S) -> std::io::Result<Response> {
    let mut raw = Vec::new();
    // A TLS peer that closes without close_notify is fine for these tests.
    match stream.read_to_end(&mut raw).await {
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(err) => return Err(err),
    }
    let raw = String::from_utf8(raw).expect("UTF-8 response");
    let Some((head, body)) = raw.split_once("\r\n\r\n") else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("no response head in {raw:?}"),
        ));
    };
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .expect("status line");
    let content_type = lines
        .filter_map(|line| line.split_once(": "))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        .map(|(_, value)| value.to_owned())
        .unwrap_or_default();
    Ok(Response {
        status,
        content_type,
        body: body.to_owned(),
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS client that trusts the certificate authority `ca_pem` only.
pub fn trusting(ca_pem: &str) -> Arc<ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("CA certificate");
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// A TLS client that accepts any server certificate (as a scraper configured with
/// `insecure_skip_verify` for a self-signed one does), and the certificates it was
/// shown, latest last.
pub fn accepting_any() -> (Arc<ClientConfig>, Arc<Mutex<Vec<CertificateDer<'static>>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let verifier = Arc::new(AnyCertificate {
        seen: seen.clone(),
        provider: provider(),
    });
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    // Every handshake a full one, so that each shows the certificate served now.
    config.resumption = rustls::client::Resumption::disabled();
    (Arc::new(config), seen)
}

#[derive(Debug)]
struct AnyCertificate {
    seen: Arc<Mutex<Vec<CertificateDer<'static>>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.seen.lock().unwrap().push(end_entity.clone().into_owned());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
