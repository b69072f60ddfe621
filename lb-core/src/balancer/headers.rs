//! gRPC's own headers, as the balancer reads and writes them: the call's deadline
//! (`grpc-timeout`) and a trailers-only answer's status (`grpc-status`).

use std::time::Duration;

use http::HeaderName;
use tokio::time::Instant;
use tonic::Code;

/// The names, made once: a name given as a `&str` is parsed at every lookup.
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub(crate) const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The `grpc-status` in response headers (a trailers-only response), if any.
pub(crate) fn header_status(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get(GRPC_STATUS)?.to_str().ok()?;
    Some(Code::from_i32(value.parse().ok()?))
}

/// Whether a status says the *endpoint* failed (for outlier detection), rather than
/// that the application answered with an error or the caller gave up.
pub(crate) fn is_endpoint_failure(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::Internal | Code::Unknown | Code::DataLoss
    )
}

/// The call's deadline from its `grpc-timeout` header (e.g. `250m` = 250 ms), as tonic
/// sets it from `Request::set_timeout`.
pub(crate) fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get(GRPC_TIMEOUT)?.to_str().ok()?;
    // At most 8 digits and a unit, by the gRPC spec; reject anything else.
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// `timeout` as a `grpc-timeout` header value (milliseconds, rounded up, at most 8
/// digits).
pub(crate) fn grpc_timeout_value(timeout: Duration) -> http::HeaderValue {
    let millis = timeout.as_micros().div_ceil(1000).clamp(1, 99_999_999);
    http::HeaderValue::from(u64::try_from(millis).unwrap_or(99_999_999))
        .to_str()
        .ok()
        .and_then(|digits| format!("{digits}m").parse().ok())
        .unwrap_or_else(|| http::HeaderValue::from_static("1m"))
}

/// `now + timeout`, saturating instead of panicking on an absurdly long timeout.
pub(crate) fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_headers_are_read_and_bad_ones_ignored() {
        let with = |value: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert("grpc-timeout", value.parse().unwrap());
            grpc_timeout(&headers)
        };
        assert_eq!(with("250m"), Some(Duration::from_millis(250)));
        assert_eq!(with("2S"), Some(Duration::from_secs(2)));
        assert_eq!(with("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(with("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "12x", "123456789S", "-1S", "1.5S"] {
            assert_eq!(with(bad), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }

    #[test]
    fn grpc_timeout_values_round_trip() {
        for ms in [1u64, 250, 10_000] {
            let mut headers = http::HeaderMap::new();
            headers.insert(
                "grpc-timeout",
                grpc_timeout_value(Duration::from_millis(ms)),
            );
            assert_eq!(grpc_timeout(&headers), Some(Duration::from_millis(ms)));
        }
    }
}
