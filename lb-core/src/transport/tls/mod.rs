//! TLS and mutual TLS: which certificates a program trusts and which it shows.
//!
//! gRPC over TLS is HTTP/2 inside a TLS session; nothing about balancing changes, but
//! every connection the balancer keeps is now a TLS session of its own, verified on
//! its own. Three files are involved, all PEM:
//!
//! | who | shows (`--tls-cert`, `--tls-key`) | trusts (`--ca`) |
//! |--------|-------------------------------------|--------------------------------|
//! | server | its certificate, naming its address | for mTLS: the CA of its clients |
//! | client | for mTLS: its own certificate | the CA that signed the servers |
//!
//! A client checks the server's certificate against the *name it dialled*: for the
//! endpoint `127.0.0.1:50051` the certificate must list the IP address 127.0.0.1;
//! for `localhost:50051`, the name `localhost`. When servers are reached by address
//! but their certificates name a host, [`ClientTls::server_name`] says which name to
//! expect. With mutual TLS, the server also asks for a client certificate and refuses
//! the handshake without one signed by its CA: such a client never gets to send a call.
//!
//! Files are read and checked when loaded (each certificate parsed, the key matched to
//! its certificate), so a wrong path, a file that holds no usable certificate or a key
//! that belongs to another certificate is an error at start-up naming the file, not a
//! failed handshake later. A handshake is bounded in time on both sides.
//!
//! ```
//! use lb_core::tls::{ClientTls, server_config};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = std::env::temp_dir().join(format!("lb-tls-doc-{}", std::process::id()));
//! // greeter-certs (scripts/gen-certs.sh) writes a throwaway CA and certificates:
//! let pki = greeter_server::certs::DemoPki::generate()?;
//! pki.write_to(&dir)?; // ca.pem, server.pem, server.key, client.pem, client.key
//!
//! // A server with mutual TLS: its identity, and the CA its clients must come from.
//! let _server = server_config(&dir.join("server.pem"), &dir.join("server.key"), Some(&dir.join("ca.pem")))?;
//! // A client that trusts that CA and shows its own certificate.
//! let _client = ClientTls::from_files(&dir.join("ca.pem"), Some((&dir.join("client.pem"), &dir.join("client.key"))))?;
//!
//! let err = ClientTls::from_files(&dir.join("nothing.pem"), None).unwrap_err();
//! assert!(err.to_string().contains("nothing.pem"));
//! # std::fs::remove_dir_all(dir)?;
//! # Ok(()) }
//! ```

mod explain;
mod pem;
#[cfg(feature = "server")]
mod server;

pub use explain::explain;
use pem::{at, at_pair, certificates, check_ca, check_identity, read};
#[cfg(feature = "server")]
pub(crate) use server::describe_handshake_error;
#[cfg(feature = "server")]
pub use server::{ServerTls, server_config};

use std::{path::Path, sync::Arc, time::Duration};

use rustls_pki_types::{PrivateKeyDer, pem::PemObject};

use crate::{Endpoint, Error};

/// How a balancer's connections speak TLS: the CA it trusts, the certificate it shows
/// (for mutual TLS), and optionally the name servers' certificates must carry.
///
/// The balancer does the handshake itself (see `balancer/connector.rs`), so that a
/// server's refusal is read and reported for what it is.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    server_name: Option<String>,
    /// How long a handshake may take (set by the balancer to its connect timeout).
    timeout: Duration,
}

/// Not derived: the settings hold the client's private key.
impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Trusts the CA certificates in `ca` (PEM) and, with `identity`, shows that
    /// certificate chain and key (PEM) to servers that ask (mutual TLS).
    pub fn from_pem(ca: &[u8], identity: Option<(&[u8], &[u8])>) -> Result<Self, Error> {
        check_ca(ca)?;
        if let Some((cert, key)) = identity {
            check_identity(cert, key).map_err(|e| at_pair(None, None, e))?;
        }
        Self::new(ca, identity)
    }

    /// [`ClientTls::from_pem`] with the PEM read from files; errors name the file.
    pub fn from_files(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<Self, Error> {
        let ca_pem = read(ca)?;
        check_ca(&ca_pem).map_err(|e| at(ca, e))?;
        let identity = match identity {
            Some((cert, key)) => {
                let (cert_pem, key_pem) = (read(cert)?, read(key)?);
                check_identity(&cert_pem, &key_pem)
                    .map_err(|e| at_pair(Some(cert), Some(key), e))?;
                Some((cert_pem, key_pem))
            }
            None => None,
        };
        Self::new(
            &ca_pem,
            identity.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
        )
    }

    /// Checked PEM to rustls settings.
    fn new(ca: &[u8], identity: Option<(&[u8], &[u8])>) -> Result<Self, Error> {
        let fail = |reason: String| Error::Tls {
            path: String::new(),
            reason,
        };
        let mut roots = rustls::RootCertStore::empty();
        for anchor in certificates(ca, "a CA certificate").map_err(fail)? {
            roots.add(anchor).map_err(|e| fail(e.to_string()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| fail(e.to_string()))?
            .with_root_certificates(roots);
        let mut config = match identity {
            Some((cert, key)) => {
                let chain = certificates(cert, "a certificate").map_err(fail)?;
                let key = PrivateKeyDer::from_pem_slice(key)
                    .map_err(|e| fail(format!("a private key: {e}")))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| fail(e.to_string()))?
            }
            None => builder.with_no_client_auth(),
        };
        // gRPC is HTTP/2: say so in ALPN, as gRPC servers expect.
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            config: Arc::new(config),
            server_name: None,
            timeout: HANDSHAKE_TIMEOUT,
        })
    }

    /// Expect servers' certificates to name `name` (a DNS name or an IP address),
    /// whatever address was dialled; also the name sent in SNI. A name TLS cannot
    /// carry is an error.
    pub fn server_name(mut self, name: &str) -> Result<Self, Error> {
        rustls_pki_types::ServerName::try_from(name).map_err(|_| Error::Tls {
            path: String::new(),
            reason: format!("`{name}` is not a DNS name or an IP address a certificate can name"),
        })?;
        self.server_name = Some(name.to_string());
        Ok(self)
    }

    /// The settings for servers found through `target`: for a `dns:///name:port`
    /// target, unless a server name was set, their certificates must name `name` (the
    /// service, as in gRPC), not each resolved address. Other targets change nothing.
    pub fn for_target(self, target: &crate::resolver::Target) -> Result<Self, Error> {
        match (target, &self.server_name) {
            (crate::resolver::Target::Dns { host, .. }, None) => self.server_name(host),
            _ => Ok(self),
        }
    }

    /// How long a handshake may take before the attempt fails.
    pub(crate) fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// What a connection to `endpoint` needs: the rustls settings, the name its
    /// certificate must carry (the endpoint's host unless a server name was set), and
    /// the handshake's time limit.
    pub(crate) fn for_endpoint(&self, endpoint: &Endpoint) -> Result<TlsFor, Error> {
        let name = self.server_name.as_deref().unwrap_or(endpoint.host());
        let name =
            rustls_pki_types::ServerName::try_from(name.to_string()).map_err(|_| Error::Tls {
                path: String::new(),
                reason: format!(
                    "`{name}` is not a DNS name or an IP address a certificate can name"
                ),
            })?;
        Ok((self.config.clone(), name, self.timeout))
    }
}

/// The client TLS files a program takes on its command line (`--ca`, `--tls-cert`,
/// `--tls-key`, `--tls-server-name` in greeter-client; the `--backend-` ones in
/// lb-proxy), turned into [`ClientTls`] the same way everywhere.
#[derive(Clone, Debug, Default)]
pub struct ClientTlsFiles {
    /// The CA that signed the servers' certificates; `None`: no TLS.
    pub ca: Option<std::path::PathBuf>,
    /// For mutual TLS: the client's certificate, with `key`.
    pub cert: Option<std::path::PathBuf>,
    /// The private key of `cert`.
    pub key: Option<std::path::PathBuf>,
    /// The name servers' certificates must carry, whatever address is dialled.
    pub server_name: Option<String>,
}

impl ClientTlsFiles {
    /// The settings for connections to `target`'s servers (`None` without a CA): each
    /// file read and checked, the server name applied, and for a `dns:///` target the
    /// DNS name expected unless a server name was given, as in gRPC.
    pub fn load(&self, target: &crate::resolver::Target) -> Result<Option<ClientTls>, Error> {
        let Some(ca) = &self.ca else {
            return Ok(None);
        };
        let identity = match (self.cert.as_deref(), self.key.as_deref()) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(file), None) | (None, Some(file)) => {
                return Err(Error::Tls {
                    path: file.display().to_string(),
                    reason: "a client certificate and its key go together: give both".into(),
                });
            }
        };
        let mut tls = ClientTls::from_files(ca, identity)?;
        if let Some(name) = &self.server_name {
            tls = tls.server_name(name)?;
        }
        Ok(Some(tls.for_target(target)?))
    }
}

/// What a TLS connection needs: the rustls settings, the name to verify, the time
/// allowed for the handshake.
pub(crate) type TlsFor = (
    Arc<rustls::ClientConfig>,
    rustls_pki_types::ServerName<'static>,
    Duration,
);

/// How long a TLS handshake may take, client or server side, unless told otherwise:
/// a peer that accepts the connection and then says nothing must not hold it forever.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolver::Target;

    fn tls() -> ClientTls {
        let pki = greeter_server::certs::DemoPki::generate().expect("certificates");
        ClientTls::from_pem(pki.ca_pem.as_bytes(), None).expect("valid")
    }

    #[test]
    fn a_dns_target_expects_its_name_unless_told_otherwise() {
        let dns: Target = "dns:///greeter.default.svc:50051".parse().expect("valid");
        let list: Target = "127.0.0.1:50051".parse().expect("valid");
        let named = |tls: &ClientTls| tls.server_name.clone();
        let by_dns = tls().for_target(&dns).expect("a name");
        assert_eq!(named(&by_dns).as_deref(), Some("greeter.default.svc"));
        assert_eq!(named(&tls().for_target(&list).expect("ok")), None);
        let chosen = tls().server_name("other.example").expect("a name");
        let kept = chosen.for_target(&dns).expect("ok");
        assert_eq!(named(&kept).as_deref(), Some("other.example"));
    }
}
