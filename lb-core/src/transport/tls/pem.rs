//! Reading PEM files: certificates, keys and CAs checked when they are loaded, each
//! error naming the file.

use std::path::Path;

use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use crate::Error;

pub(super) fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::Tls {
        path: path.display().to_string(),
        reason: format!("cannot read it: {e}"),
    })
}

/// The same error, naming the file it is about.
pub(super) fn at(path: &Path, err: Error) -> Error {
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
pub(super) enum Part {
    Cert,
    Key,
    Pair,
}

/// The same error, naming the file (or files) of the pair it is about.
pub(super) fn at_pair(
    cert: Option<&Path>,
    key: Option<&Path>,
    (part, reason): (Part, String),
) -> Error {
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
pub(super) fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
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
pub(super) fn check_ca(pem: &[u8]) -> Result<(), Error> {
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
pub(super) fn check_identity(cert_pem: &[u8], key_pem: &[u8]) -> Result<(), (Part, String)> {
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
