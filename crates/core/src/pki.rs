//! The deployment's certificate authority: one per deployment, its key never leaves the state
//! directory.
//!
//! It issues two kinds of certificates, told apart by their extended key usage so that neither
//! can stand in for the other:
//! - agent certificates (server auth only), SANs `<name>.<tag>.flotilla` and the machine's
//!   addresses; the CLI verifies the DNS name, so one machine cannot answer for another;
//! - the CLI's client certificate (client auth only); agents accept no other client, and an
//!   agent's certificate is refused as a client because it lacks client auth.
//!
//! Keys are ECDSA P-256: fast to generate (a 200-instance fleet issues 200 of them).

use std::net::IpAddr;
use std::sync::Arc;

use flotilla_spec::Secret;
use flotilla_spec::identity::agent_dns_name;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// How long the CA is valid.
const CA_VALIDITY: Duration = Duration::days(3650);
/// How long agent and CLI certificates are valid. Re-running `create` or `update` re-issues
/// agent certificates; the CLI certificate is re-issued when it is within 30 days of expiry.
const LEAF_VALIDITY: Duration = Duration::days(397);
/// Clock skew tolerated between the deployer and machines.
const BACKDATE: Duration = Duration::hours(1);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("could not generate a key or certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error(
        "the deployment CA in the state directory is unreadable: {0}; restore it from a backup or destroy and re-create the deployment"
    )]
    BadCa(String),
    #[error("bad certificate or key: {0}")]
    Pem(String),
    #[error("TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
}

/// A certificate and its private key, both PEM.
#[derive(Clone, Debug)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: Secret,
}

/// The deployment CA.
pub struct CertificateAuthority {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority").field("key", &"<redacted>").finish()
    }
}

fn ca_params(tag: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "flotilla");
    dn.push(DnType::CommonName, format!("flotilla deployment {tag} CA"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

fn leaf_params(common_name: &str, now: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "flotilla");
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.not_before = now - BACKDATE;
    params.not_after = now + LEAF_VALIDITY;
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params
}

impl CertificateAuthority {
    /// A new CA for deployment `tag`.
    pub fn generate(tag: &str) -> Result<Self, PkiError> {
        let now = OffsetDateTime::now_utc();
        let mut params = ca_params(tag);
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_VALIDITY;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = params.self_signed(&key)?;
        Ok(CertificateAuthority { cert_pem: cert.pem(), issuer: Issuer::new(ca_params(tag), key) })
    }

    /// The CA stored by [`CertificateAuthority::generate`] for the same tag.
    pub fn from_pem(tag: &str, cert_pem: &str, key_pem: &Secret) -> Result<Self, PkiError> {
        let key =
            KeyPair::from_pem(key_pem.expose()).map_err(|e| PkiError::BadCa(e.to_string()))?;
        if !cert_pem.contains("BEGIN CERTIFICATE") {
            return Err(PkiError::BadCa("the CA certificate is not PEM".into()));
        }
        Ok(CertificateAuthority {
            cert_pem: cert_pem.to_owned(),
            issuer: Issuer::new(ca_params(tag), key),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key, for the 0600 file in the state directory only.
    pub fn key_pem(&self) -> Secret {
        Secret::new(self.issuer.key().serialize_pem())
    }

    /// A server certificate for machine `name` of deployment `tag`, valid for its DNS name
    /// ([`agent_dns_name`]) and `addresses`.
    pub fn issue_agent(
        &self,
        name: &str,
        tag: &str,
        addresses: &[IpAddr],
    ) -> Result<IssuedCert, PkiError> {
        let dns = agent_dns_name(name, tag);
        let mut params = leaf_params(&dns, OffsetDateTime::now_utc());
        params.subject_alt_names.push(SanType::DnsName(dns.as_str().try_into()?));
        for address in addresses {
            if !params.subject_alt_names.contains(&SanType::IpAddress(*address)) {
                params.subject_alt_names.push(SanType::IpAddress(*address));
            }
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// The CLI's client certificate for deployment `tag`.
    pub fn issue_client(&self, tag: &str) -> Result<IssuedCert, PkiError> {
        let mut params = leaf_params(&format!("flotilla-cli {tag}"), OffsetDateTime::now_utc());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Result<IssuedCert, PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert { cert_pem: cert.pem(), key_pem: Secret::new(key.serialize_pem()) })
    }
}

/// The crypto provider every TLS config in flotilla uses (aws-lc-rs, as the AWS SDK does).
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Parses PEM certificates.
pub fn parse_certs(pem: &str) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, PkiError> {
    use rustls_pki_types::pem::PemObject;
    let certs = rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(PkiError::Pem("no certificate in PEM".into()));
    }
    Ok(certs)
}

/// Parses a PEM private key.
pub fn parse_key(pem: &Secret) -> Result<rustls_pki_types::PrivateKeyDer<'static>, PkiError> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::PrivateKeyDer::from_pem_slice(pem.expose().as_bytes())
        .map_err(|_| PkiError::Pem("no private key in PEM".into()))
}

/// A TLS client config that trusts only the deployment CA and presents the CLI's certificate.
pub fn client_config(ca_pem: &str, client: &IssuedCert) -> Result<rustls::ClientConfig, PkiError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in parse_certs(ca_pem)? {
        roots.add(cert)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(parse_certs(&client.cert_pem)?, parse_key(&client.key_pem)?)?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_ca_issues_certificates_that_chain_to_it() {
        let ca = CertificateAuthority::generate("t1").unwrap();
        let again = CertificateAuthority::from_pem("t1", ca.cert_pem(), &ca.key_pem()).unwrap();
        let addresses = ["127.1.0.5".parse().unwrap()];
        let leaf = again.issue_agent("node_a-0", "t1", &addresses).unwrap();
        let client = again.issue_client("t1").unwrap();
        // A client config builds from the pieces, so the PEM is well formed.
        client_config(ca.cert_pem(), &client).unwrap();

        let roots = {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(parse_certs(ca.cert_pem()).unwrap().remove(0)).unwrap();
            Arc::new(roots)
        };
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots, crypto_provider())
                .build()
                .unwrap();
        let leaf_der = parse_certs(&leaf.cert_pem).unwrap().remove(0);
        let now = rustls_pki_types::UnixTime::now();
        use rustls::client::danger::ServerCertVerifier;
        // `node_a-0` has an underscore, which no DNS label may have: its name is derived.
        let dns = agent_dns_name("node_a-0", "t1");
        assert!(dns.starts_with("node-a-0--") && dns.ends_with(".t1.flotilla"), "{dns}");
        let name = rustls_pki_types::ServerName::try_from(dns.as_str()).unwrap();
        verifier.verify_server_cert(&leaf_der, &[], &name, &[], now).unwrap();
        let ip = rustls_pki_types::ServerName::try_from("127.1.0.5").unwrap();
        verifier.verify_server_cert(&leaf_der, &[], &ip, &[], now).unwrap();
        let other_dns = agent_dns_name("node_a-1", "t1");
        let other = rustls_pki_types::ServerName::try_from(other_dns.as_str()).unwrap();
        assert!(verifier.verify_server_cert(&leaf_der, &[], &other, &[], now).is_err());
        // The client certificate lacks server auth, so it cannot pose as an agent.
        let client_der = parse_certs(&client.cert_pem).unwrap().remove(0);
        assert!(verifier.verify_server_cert(&client_der, &[], &name, &[], now).is_err());
    }

    #[test]
    fn debug_never_shows_keys() {
        let ca = CertificateAuthority::generate("t1").unwrap();
        assert!(!format!("{ca:?}").contains("PRIVATE"));
        let leaf = ca.issue_client("t1").unwrap();
        assert!(!format!("{leaf:?}").contains("PRIVATE"));
    }
}
