//! Certificates and keys for one cluster, generated in-process.
//!
//! Each cluster gets its own certificate authority, so credentials of one cluster
//! are rejected by every other: a fleet behaves like independent clusters.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

use crate::error::{Error, Result};

/// A certificate with its private key, both PEM-encoded.
#[derive(Clone)]
pub(crate) struct CertAndKey {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A cluster's certificate authority: it signs the apiserver's serving certificate and
/// every client certificate of the cluster.
pub(crate) struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authority { .. }") // never print the key
    }
}

impl Authority {
    pub fn new(cluster: &str) -> Result<Self> {
        let what = || format!("the certificate authority of {cluster}");
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(|source| cert_err(what(), source))?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("kube-envtest {cluster} CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().map_err(|source| cert_err(what(), source))?;
        let issuer = CertifiedIssuer::self_signed(params, key).map_err(|source| cert_err(what(), source))?;
        Ok(Authority { issuer })
    }

    pub fn ca_pem(&self) -> String {
        self.issuer.pem()
    }

    /// The apiserver's serving certificate, valid for the loopback addresses.
    pub fn serving(&self) -> Result<CertAndKey> {
        let names = vec![
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
            "kubernetes.default.svc".to_owned(),
        ];
        let params = CertificateParams::new(names)
            .map_err(|source| cert_err("the serving certificate".into(), source))?;
        self.sign("kube-apiserver", params, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate: Kubernetes takes the user from the common name and the
    /// groups from the organizations.
    pub fn client(&self, user: &str, groups: &[&str]) -> Result<CertAndKey> {
        let mut params = CertificateParams::new(Vec::<String>::new())
            .map_err(|source| cert_err(format!("the client certificate of {user}"), source))?;
        for group in groups {
            params.distinguished_name.push(DnType::OrganizationName, *group);
        }
        self.sign(user, params, ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn sign(
        &self,
        common_name: &str,
        mut params: CertificateParams,
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<CertAndKey> {
        let what = || format!("the certificate of {common_name}");
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().map_err(|source| cert_err(what(), source))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| cert_err(what(), source))?;
        Ok(CertAndKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The key pair that signs and verifies service account tokens, as PEM
/// `(public, private)`.
pub(crate) fn service_account_keys() -> Result<(String, String)> {
    let key = KeyPair::generate().map_err(|source| cert_err("the service account key".into(), source))?;
    Ok((key.public_key_pem(), key.serialize_pem()))
}

fn cert_err(what: String, source: rcgen::Error) -> Error {
    Error::Certificate { what, source }
}
