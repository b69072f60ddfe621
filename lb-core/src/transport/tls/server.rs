//! The server side of TLS, for greeter-server and lb-proxy: a certificate, a key, and
//! for mutual TLS the CA that clients' certificates must be signed by.

use std::{path::Path, sync::Arc};

use rustls_pki_types::{PrivateKeyDer, pem::PemObject};

use crate::Error;

use super::explain::{alert_name, certificate_problem};
use super::pem::{at, at_pair, certificates, check_ca, check_identity, read};

#[cfg(feature = "server")]
/// Server settings: show the certificate chain in `cert` with its key, and with
/// `client_ca`, require every client to show a certificate signed by that CA
/// (mutual TLS; a client without one fails the handshake).
///
/// The server side of the handshake is [`crate::server::incoming`]'s: it bounds it in
/// time and logs every refused handshake with the peer's address and the reason.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<ServerTls, Error> {
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    check_identity(&cert_pem, &key_pem).map_err(|e| at_pair(Some(cert), Some(key), e))?;
    let fail = |path: &Path, reason: String| Error::Tls {
        path: path.display().to_string(),
        reason,
    };
    let chain = certificates(&cert_pem, "a certificate").map_err(|e| fail(cert, e))?;
    let private_key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| fail(key, format!("a private key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(cert, e.to_string()))?;
    let builder = match client_ca {
        Some(ca) => {
            let ca_pem = read(ca)?;
            check_ca(&ca_pem).map_err(|e| at(ca, e))?;
            let mut roots = rustls::RootCertStore::empty();
            for anchor in certificates(&ca_pem, "a CA certificate").map_err(|e| fail(ca, e))? {
                roots.add(anchor).map_err(|e| fail(ca, e.to_string()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| fail(ca, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, private_key)
        .map_err(|e| fail(cert, e.to_string()))?;
    // gRPC is HTTP/2: say so in ALPN, as every gRPC client expects.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(ServerTls(Arc::new(config)))
}

#[cfg(feature = "server")]
/// A server's TLS settings, from [`server_config`], for [`crate::server::incoming`].
#[derive(Clone)]
pub struct ServerTls(Arc<rustls::ServerConfig>);

#[cfg(feature = "server")]
impl ServerTls {
    pub(crate) fn config(&self) -> Arc<rustls::ServerConfig> {
        self.0.clone()
    }
}

#[cfg(feature = "server")]
/// Not derived: it would print the private key.
impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

#[cfg(feature = "server")]
/// Why a server refused a client's handshake, for its log.
pub(crate) fn describe_handshake_error(err: &std::io::Error) -> String {
    let Some(tls) = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        return format!("connection closed during the TLS handshake ({err})");
    };
    match tls {
        rustls::Error::NoCertificatesPresented => {
            "the client showed no certificate, and this server requires one (mutual TLS)".into()
        }
        rustls::Error::InvalidCertificate(why) => {
            format!(
                "the client's certificate was refused: {}",
                certificate_problem(why)
            )
        }
        rustls::Error::AlertReceived(alert) => {
            format!("the client ended the handshake: {}", alert_name(*alert))
        }
        other => other.to_string(),
    }
}
