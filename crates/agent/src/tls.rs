//! The API's TLS configuration: the server presents the identity bundle's certificate and
//! requires a client certificate that chains to the deployment CA and carries the clientAuth
//! extended key usage. Only the CLI's certificate has it; another agent's certificate (server
//! auth only) and certificates of other deployments are refused during the handshake.
//!
//! The crypto provider is aws-lc-rs, as everywhere in flotilla, built here directly so that the
//! agent does not depend on `flotilla-core`.

use std::sync::Arc;

use flotilla_spec::identity::IdentityBundle;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::AgentError;

/// Builds the server config from `bundle`, read from `location` (named in errors).
pub(crate) fn server_config(
    bundle: &IdentityBundle,
    location: &str,
) -> Result<Arc<rustls::ServerConfig>, AgentError> {
    let bad = |message: String| AgentError::BadIdentity { location: location.to_owned(), message };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());

    let mut roots = rustls::RootCertStore::empty();
    for ca in parse_certificates(&bundle.ca_cert).map_err(|e| bad(format!("`ca_cert`: {e}")))? {
        roots.add(ca).map_err(|e| bad(format!("`ca_cert`: {e}")))?;
    }
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| bad(format!("`ca_cert`: {e}")))?;

    let chain = parse_certificates(&bundle.cert).map_err(|e| bad(format!("`cert`: {e}")))?;
    // The key's parse error never quotes the key: it only says that no key was found.
    let key = PrivateKeyDer::from_pem_slice(bundle.key.expose().as_bytes())
        .map_err(|_| bad("`key`: no PKCS#8 private key in PEM".to_owned()))?;

    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(format!("TLS setup: {e}")))?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain, key)
        .map_err(|e| bad(format!("`cert` and `key` do not go together: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn parse_certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certificates.is_empty() {
        return Err("no certificate in PEM".to_owned());
    }
    Ok(certificates)
}
