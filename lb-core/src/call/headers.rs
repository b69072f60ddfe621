//! gRPC's own headers, as the balancer reads and writes them: the call's deadline
//! (`grpc-timeout`), the attempts that came before (`grpc-previous-rpc-attempts`) and a
//! trailers-only answer's status (`grpc-status`).

use std::time::Duration;

use http::HeaderName;
use tokio::time::Instant;
use tonic::Code;

/// The names, made once: a name given as a `&str` is parsed at every lookup.
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
/// The header that tells a server how many attempts of this call came before (gRFC A6).
const PREVIOUS_ATTEMPTS: HeaderName = HeaderName::from_static("grpc-previous-rpc-attempts");

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

/// Readies one attempt's headers, for a retry and a hedge alike: the attempt carries
/// what is left of the call's deadline as its `grpc-timeout` (not all of it) and, after
/// the first, how many attempts came before (`previous`).
///
/// `None` when the deadline has passed: there is no time for this attempt. Otherwise
/// whether the attempt has a *fair share* of the call's `timeout`, at least half: an
/// attempt sent later (after a wait for a reconnect, a backoff or a hedging delay) that
/// runs out of time is no verdict on its endpoint.
pub(crate) fn stamp_attempt(
    headers: &mut http::HeaderMap,
    deadline: Option<Instant>,
    timeout: Option<Duration>,
    previous: u32,
) -> Option<bool> {
    let mut fair_share = true;
    if let Some(deadline) = deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        fair_share = timeout.is_none_or(|total| left * 2 >= total);
        headers.insert(GRPC_TIMEOUT, grpc_timeout_value(left));
    }
    if previous > 0 {
        headers.insert(PREVIOUS_ATTEMPTS, http::HeaderValue::from(previous));
    }
    Some(fair_share)
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

    #[tokio::test(start_paused = true)]
    async fn an_attempt_carries_what_is_left_and_how_many_came_before() {
        let total = Duration::from_millis(1000);
        let deadline = deadline_after(total);
        let mut headers = http::HeaderMap::new();
        // The first attempt: the whole deadline, no previous attempts.
        assert_eq!(
            stamp_attempt(&mut headers, Some(deadline), Some(total), 0),
            Some(true)
        );
        assert_eq!(grpc_timeout(&headers), Some(total));
        assert!(headers.get(PREVIOUS_ATTEMPTS).is_none());
        // 600 ms later: 400 ms left, less than half, so no verdict on its endpoint.
        tokio::time::advance(Duration::from_millis(600)).await;
        assert_eq!(
            stamp_attempt(&mut headers, Some(deadline), Some(total), 2),
            Some(false)
        );
        assert_eq!(grpc_timeout(&headers), Some(Duration::from_millis(400)));
        assert_eq!(headers[PREVIOUS_ATTEMPTS], "2");
        // Past the deadline: no attempt at all.
        tokio::time::advance(Duration::from_millis(400)).await;
        assert_eq!(
            stamp_attempt(&mut headers, Some(deadline), Some(total), 3),
            None
        );
        // Without a deadline, every attempt has a fair share and no `grpc-timeout`.
        let mut headers = http::HeaderMap::new();
        assert_eq!(stamp_attempt(&mut headers, None, None, 1), Some(true));
        assert!(headers.get(GRPC_TIMEOUT).is_none());
    }
}
