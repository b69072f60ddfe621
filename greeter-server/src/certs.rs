//! A throwaway certificate authority for the demo and the tests (`greeter-certs`).
//!
//! TLS needs certificates, and real ones come from a CA your organisation runs. To
//! try TLS and mutual TLS on one machine, this makes a private CA and two
//! certificates signed by it, all new on every run:
//!
//! ```text
//!   ca.pem  ("grpc-lb-rs demo CA <id>", self-signed; trust it with --ca)
//!     ├── server.pem + server.key   names localhost, 127.0.0.1 and ::1 (server auth)
//!     └── client.pem + client.key   names grpc-lb-rs-client            (client auth)
//! ```
//!
//! The CA's private key is never written: nobody can sign anything else with it, so
//! trusting `ca.pem` trusts exactly these two certificates. Keys are ECDSA P-256.
//! These certificates are for loopback experiments; do not use them in production.
//!
//! ```
//! let pki = greeter_server::certs::DemoPki::generate()?;
//! assert!(pki.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
//! assert!(pki.server_key_pem.contains("PRIVATE KEY"));
//! # Ok::<(), rcgen::Error>(())
//! ```

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The names the demo server certificate is valid for.
pub const SERVER_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// The CA certificate and the server's and client's certificates and keys, as PEM.
#[derive(Clone)]
pub struct DemoPki {
    /// The CA certificate: what clients (and, for mTLS, servers) trust.
    pub ca_pem: String,
    /// The server certificate, valid for [`SERVER_NAMES`].
    pub server_cert_pem: String,
    /// The server's private key.
    pub server_key_pem: String,
    /// The client certificate, for mutual TLS.
    pub client_cert_pem: String,
    /// The client's private key.
    pub client_key_pem: String,
}

impl std::fmt::Debug for DemoPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DemoPki { .. }") // keys stay out of logs
    }
}

impl DemoPki {
    /// A new CA, and a server and a client certificate signed by it.
    pub fn generate() -> Result<Self, rcgen::Error> {
        Self::make(false)
    }

    /// The same, but the client certificate expired long ago (to see a server refuse
    /// it: "certificate expired").
    pub fn generate_with_expired_client() -> Result<Self, rcgen::Error> {
        Self::make(true)
    }

    fn make(expired_client: bool) -> Result<Self, rcgen::Error> {
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        // A name of its own (from its key), so that two demo CAs are told apart: a
        // certificate from another run is then "UnknownIssuer", not a bad signature.
        let id: String = ca_key.public_key_raw()[1..5]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        ca.distinguished_name
            .push(DnType::CommonName, format!("grpc-lb-rs demo CA {id}"));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);

        let leaf = |names: Vec<String>,
                    common_name: &str,
                    usage: ExtendedKeyUsagePurpose,
                    expired: bool| {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(names)?;
            if expired {
                params.not_before = rcgen::date_time_ymd(2000, 1, 1);
                params.not_after = rcgen::date_time_ymd(2001, 1, 1);
            }
            params
                .distinguished_name
                .push(DnType::CommonName, common_name);
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &issuer)?;
            Ok::<_, rcgen::Error>((cert.pem(), key.serialize_pem()))
        };
        let (server_cert_pem, server_key_pem) = leaf(
            SERVER_NAMES.iter().map(|name| name.to_string()).collect(),
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
            false,
        )?;
        let (client_cert_pem, client_key_pem) = leaf(
            vec!["grpc-lb-rs-client".into()],
            "grpc-lb-rs-client",
            ExtendedKeyUsagePurpose::ClientAuth,
            expired_client,
        )?;
        Ok(Self {
            ca_pem: ca_cert.pem(),
            server_cert_pem,
            server_key_pem,
            client_cert_pem,
            client_key_pem,
        })
    }

    /// Writes `ca.pem`, `server.pem`, `server.key`, `client.pem` and `client.key` into
    /// `dir` (created if missing); the keys are readable by their owner only.
    pub fn write_to(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for (name, text, secret) in [
            ("ca.pem", &self.ca_pem, false),
            ("server.pem", &self.server_cert_pem, false),
            ("server.key", &self.server_key_pem, true),
            ("client.pem", &self.client_cert_pem, false),
            ("client.key", &self.client_key_pem, true),
        ] {
            let path = dir.join(name);
            write_file(&path, text, secret)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        }
        Ok(())
    }
}

#[cfg(unix)]
fn write_file(path: &Path, text: &str, secret: bool) -> std::io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    // Removed first, so that a key left by an earlier run with wider permissions does
    // not keep them.
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)?
        .write_all(text.as_bytes())
}

#[cfg(not(unix))]
fn write_file(path: &Path, text: &str, _secret: bool) -> std::io::Result<()> {
    std::fs::write(path, text)
}
