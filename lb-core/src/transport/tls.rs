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

use std::{path::Path, sync::Arc, time::Duration};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

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

/// What a TLS failure means, in words, for the side that saw it: `Some` when `err`
/// is (or is caused by) a TLS error a user can act on.
pub fn explain(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut current = Some(err);
    while let Some(e) = current {
        // An io::Error's `source()` skips the error it wraps: look inside it too.
        let inner = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        let tls = e
            .downcast_ref::<rustls::Error>()
            .or_else(|| inner.and_then(|i| i.downcast_ref::<rustls::Error>()));
        if let Some(tls) = tls {
            return Some(match tls {
                rustls::Error::AlertReceived(alert) => refused_by_server(*alert),
                rustls::Error::InvalidCertificate(why) => format!(
                    "the server's certificate was refused: {}",
                    certificate_problem(why)
                ),
                other => format!("TLS: {other}"),
            });
        }
        // h2 keeps only the text of an I/O error, so an alert that reached the
        // client through HTTP/2 is known by rustls's words for it.
        if let Some((_, name)) = e.to_string().split_once("received fatal alert: ") {
            let name = name.split(|c: char| !c.is_ascii_alphanumeric()).next()?;
            let alert = ALERTS.iter().find(|(n, _)| *n == name).map(|(_, a)| *a);
            return Some(match alert {
                Some(alert) => refused_by_server(alert),
                None => format!("the server refused the connection: {name}"),
            });
        }
        current = e.source();
    }
    None
}

/// What a client is told when the server ended the handshake with `alert`.
fn refused_by_server(alert: rustls::AlertDescription) -> String {
    match alert {
        rustls::AlertDescription::CertificateRequired => {
            "the server refused the connection: certificate required (it wants a client \
             certificate: give --tls-cert and --tls-key)"
                .into()
        }
        alert => format!("the server refused the connection: {}", alert_name(alert)),
    }
}

/// The alerts a refused handshake ends with, by the name rustls prints for them.
const ALERTS: [(&str, rustls::AlertDescription); 10] = {
    use rustls::AlertDescription as A;
    [
        ("CertificateRequired", A::CertificateRequired),
        ("CertificateExpired", A::CertificateExpired),
        ("UnknownCA", A::UnknownCA),
        ("BadCertificate", A::BadCertificate),
        ("CertificateRevoked", A::CertificateRevoked),
        ("CertificateUnknown", A::CertificateUnknown),
        ("UnsupportedCertificate", A::UnsupportedCertificate),
        ("AccessDenied", A::AccessDenied),
        ("HandshakeFailure", A::HandshakeFailure),
        ("NoApplicationProtocol", A::NoApplicationProtocol),
    ]
};

/// A TLS alert as a person would say it.
fn alert_name(alert: rustls::AlertDescription) -> String {
    use rustls::AlertDescription as A;
    match alert {
        A::CertificateRequired => "certificate required".into(),
        A::CertificateExpired => "certificate expired".into(),
        A::UnknownCA => "unknown CA (the certificate is not signed by a CA it trusts)".into(),
        A::BadCertificate => "bad certificate".into(),
        A::CertificateRevoked => "certificate revoked".into(),
        A::CertificateUnknown => "certificate unknown".into(),
        A::UnsupportedCertificate => "unsupported certificate".into(),
        A::AccessDenied => "access denied".into(),
        A::HandshakeFailure => "handshake failure (no cipher or version in common)".into(),
        A::NoApplicationProtocol => "no application protocol (it does not speak h2)".into(),
        other => format!("{other:?}"),
    }
}

fn certificate_problem(why: &rustls::CertificateError) -> String {
    use rustls::CertificateError as C;
    match why {
        C::Expired | C::ExpiredContext { .. } => "certificate expired".into(),
        C::NotValidYet | C::NotValidYetContext { .. } => "certificate not valid yet".into(),
        C::UnknownIssuer => "unknown CA (not signed by a CA that is trusted here)".into(),
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            "not valid for the name dialled (see --tls-server-name)".into()
        }
        C::Revoked => "certificate revoked".into(),
        C::BadSignature => "bad signature".into(),
        other => format!("{other:?}"),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::Tls {
        path: path.display().to_string(),
        reason: format!("cannot read it: {e}"),
    })
}

/// The same error, naming the file it is about.
fn at(path: &Path, err: Error) -> Error {
    match err {
        Error::Tls { reason, .. } => Error::Tls {
            path: path.display().to_string(),
            reason,
        },
        other => other,
    }
}

/// Which of a certificate/key pair a problem is about.
#[derive(Debug)]
enum Part {
    Cert,
    Key,
    Pair,
}

/// The same error, naming the file (or files) of the pair it is about.
fn at_pair(cert: Option<&Path>, key: Option<&Path>, (part, reason): (Part, String)) -> Error {
    let name = |p: Option<&Path>| p.map(|p| p.display().to_string()).unwrap_or_default();
    let path = match part {
        Part::Cert => name(cert),
        Part::Key => name(key),
        Part::Pair if cert.is_some() => format!("{} and {}", name(cert), name(key)),
        Part::Pair => String::new(),
    };
    Error::Tls { path, reason }
}

/// PEM certificates, at least one, every one a certificate rustls can use.
fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what}: not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "{what}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it"
        ));
    }
    Ok(certs)
}

/// CA certificates that parse as trust anchors (tonic would drop others silently, and
/// every server would then be "UnknownIssuer").
fn check_ca(pem: &[u8]) -> Result<(), Error> {
    let fail = |reason: String| Error::Tls {
        path: String::new(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(pem, "a CA certificate").map_err(fail)? {
        roots
            .add(cert)
            .map_err(|e| fail(format!("a CA certificate that cannot be used: {e}")))?;
    }
    Ok(())
}

/// A certificate chain and the private key of its first certificate.
fn check_identity(cert_pem: &[u8], key_pem: &[u8]) -> Result<(), (Part, String)> {
    let certs = certificates(cert_pem, "a certificate").map_err(|e| (Part::Cert, e))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
        (
            Part::Key,
            format!("a private key: no usable PEM private key in it ({e})"),
        )
    })?;
    let key = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| {
        (
            Part::Key,
            format!("a private key of a kind TLS cannot use: {e}"),
        )
    })?;
    rustls::sign::CertifiedKey::new(certs, key)
        .keys_match()
        .map_err(|e| {
            (
                Part::Pair,
                format!("the key does not belong to the certificate ({e})"),
            )
        })
}

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
