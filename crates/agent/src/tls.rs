//! TLS to the control plane: rustls (the aws-lc-rs provider, as reqwest uses) trusting the system's CA certificates plus
//! any CA the operator gives, with `--ca-file` or as `ca_pem` in the user-data (a control plane
//! with a private CA hands its certificate to its instances that way; a CA certificate is
//! public). Plain `http://` stays possible for a local cloud's private bridge.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::AgentError;

/// The client configuration every connection to the control plane uses.
pub fn client_config(extra_ca_pem: &[&[u8]]) -> Result<Arc<rustls::ClientConfig>, AgentError> {
    let bad = |what: &str, detail: String| AgentError::Identity {
        what: what.into(),
        detail,
    };
    let mut roots = rustls::RootCertStore::empty();
    // The system's bundle; a host without one (a minimal image) still trusts the given CAs.
    let native = rustls_native_certs::load_native_certs();
    let (_added, _ignored) = roots.add_parsable_certificates(native.certs);
    for pem in extra_ca_pem {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<_, _>>()
            .map_err(|e| bad("the CA certificate", format!("not PEM certificates: {e}")))?;
        if certs.is_empty() {
            return Err(bad("the CA certificate", "holds no PEM certificate".into()));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| bad("the CA certificate", format!("not usable: {e}")))?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("TLS", e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// An HTTP client builder that uses `tls` (never the HTTP library's default configuration,
/// which refuses to start on a host without CA certificates even for plain `http://`).
pub fn http_builder(tls: &Arc<rustls::ClientConfig>) -> reqwest::ClientBuilder {
    reqwest::Client::builder().tls_backend_preconfigured(rustls::ClientConfig::clone(tls))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_ca_is_refused_clearly() {
        for bad in [
            &b"not a certificate"[..],
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        ] {
            let e = client_config(&[bad]).unwrap_err().to_string();
            assert!(e.contains("CA certificate"), "{e}");
        }
        assert!(client_config(&[]).is_ok());
    }
}
