//! A TLS failure in words a user can act on: which side refused, and why.

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
pub(super) fn refused_by_server(alert: rustls::AlertDescription) -> String {
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
pub(super) const ALERTS: [(&str, rustls::AlertDescription); 10] = {
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
pub(super) fn alert_name(alert: rustls::AlertDescription) -> String {
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

pub(super) fn certificate_problem(why: &rustls::CertificateError) -> String {
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
