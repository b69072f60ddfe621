//! Endpoint addresses: what `--servers 127.0.0.1:50051,127.0.0.1:50052` turns into.
//!
//! An [`Endpoint`] is one backend a call can be sent to, written `host:port`. The host
//! may be an IPv4 address, a bracketed IPv6 address (`[::1]:50051`) or a DNS name
//! (`localhost:50051`); the port is required, since gRPC has no default port. A weight
//! for the weighted policies may follow: `127.0.0.1:50051=3` (default 1).
//!
//! ```
//! use lb_core::{Endpoint, parse_endpoint_list};
//!
//! let list = parse_endpoint_list("127.0.0.1:50051=3, [::1]:50052").unwrap();
//! assert_eq!(list[0].to_string(), "127.0.0.1:50051");
//! assert_eq!(list[0].weight(), 3);
//! assert_eq!(list[1].port(), 50052);
//! assert_eq!(list[1].weight(), 1);
//!
//! let err = "127.0.0.1".parse::<Endpoint>().unwrap_err();
//! assert!(err.to_string().contains("missing port"));
//! ```
//!
//! The ground floor. May import: `error`.

use std::{fmt, net::Ipv6Addr, str::FromStr};

use crate::Error;

/// The largest weight an endpoint may have.
pub const MAX_WEIGHT: u32 = 10_000;

/// One backend address, `host:port`, with a weight.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    // Shared, not copied: an endpoint is cloned into every response (`PickedEndpoint`).
    host: std::sync::Arc<str>,
    port: u16,
    weight: u32,
}

impl Endpoint {
    /// The host part: an IP address (IPv6 without brackets) or a DNS name.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The relative weight, 1 to [`MAX_WEIGHT`], used by the weighted policies.
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// The same address with another weight (clamped to 1..=[`MAX_WEIGHT`]).
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight.clamp(1, MAX_WEIGHT);
        self
    }

    /// The URI tonic connects to (`http://host:port`; plaintext HTTP/2).
    pub fn uri(&self) -> String {
        format!("http://{self}")
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for Endpoint {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self, Error> {
        let invalid = |reason: String| Error::InvalidEndpoint {
            input: input.to_string(),
            reason,
        };
        let (text, weight) = match input.trim().split_once('=') {
            None => (input.trim(), 1),
            Some((address, weight)) => {
                let weight = match weight.trim().parse::<u32>() {
                    Ok(w) if (1..=MAX_WEIGHT).contains(&w) => w,
                    _ => {
                        return Err(invalid(format!(
                            "weight `{weight}` is not a whole number from 1 to {MAX_WEIGHT}"
                        )));
                    }
                };
                (address.trim(), weight)
            }
        };
        if text.is_empty() {
            return Err(invalid("empty address (expected host:port)".into()));
        }
        if text.contains("://") {
            return Err(invalid(
                "write host:port without a scheme (e.g. 127.0.0.1:50051)".into(),
            ));
        }

        // Split host and port. A bracketed IPv6 address has colons of its own, so it
        // is handled first; otherwise the port follows the only colon.
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or_else(|| invalid("missing `]` after an IPv6 address".into()))?;
            host.parse::<Ipv6Addr>()
                .map_err(|_| invalid(format!("`{host}` is not an IPv6 address")))?;
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| invalid("missing port (expected [ipv6]:port)".into()))?;
            (host, port)
        } else {
            match text.split_once(':') {
                None => {
                    return Err(invalid(
                        "missing port (expected host:port, e.g. 127.0.0.1:50051)".into(),
                    ));
                }
                Some((_, rest)) if rest.contains(':') => {
                    return Err(invalid(
                        "too many `:`; write an IPv6 address in brackets, e.g. [::1]:50051".into(),
                    ));
                }
                Some(parts) => parts,
            }
        };

        if host.is_empty() {
            return Err(invalid("missing host before `:`".into()));
        }
        if !host.contains(':') && !is_hostname(host) {
            return Err(invalid(format!(
                "`{host}` is neither an IP address nor a host name"
            )));
        }
        let port = match port.parse::<u32>() {
            Ok(0) => return Err(invalid("port 0 cannot be dialled; use 1-65535".into())),
            Ok(p) if p <= u32::from(u16::MAX) => p as u16,
            Ok(p) => return Err(invalid(format!("port {p} is out of range (1-65535)"))),
            Err(_) if port.is_empty() => return Err(invalid("missing port after `:`".into())),
            Err(_) => return Err(invalid(format!("port `{port}` is not a number"))),
        };
        Ok(Endpoint {
            host: host.into(),
            port,
            weight,
        })
    }
}

/// Letters, digits, `-` and `.`, which covers IPv4 addresses and DNS names.
fn is_hostname(host: &str) -> bool {
    host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

/// Parses a comma-separated endpoint list, as given to `--servers`.
///
/// Blank space around entries is ignored; an empty entry (`a,,b`) or an empty list is an
/// error, because a silently shorter list would skew every share the demo shows.
pub fn parse_endpoint_list(input: &str) -> Result<Vec<Endpoint>, Error> {
    if input.trim().is_empty() {
        return Err(Error::NoEndpoints);
    }
    input.split(',').map(str::parse).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(input: &str) -> String {
        input.parse::<Endpoint>().unwrap_err().to_string()
    }

    #[test]
    fn parses_ipv4_ipv6_and_names() {
        let ep: Endpoint = "127.0.0.1:50051".parse().unwrap();
        assert_eq!((ep.host(), ep.port()), ("127.0.0.1", 50051));
        let ep: Endpoint = "[::1]:50052".parse().unwrap();
        assert_eq!((ep.host(), ep.port()), ("::1", 50052));
        assert_eq!(ep.to_string(), "[::1]:50052");
        assert_eq!(ep.uri(), "http://[::1]:50052");
        let ep: Endpoint = " localhost:7 ".parse().unwrap();
        assert_eq!(ep.to_string(), "localhost:7");
    }

    #[test]
    fn bad_addresses_say_which_and_why() {
        assert!(reason("127.0.0.1").contains("`127.0.0.1`: missing port"));
        assert!(reason("127.0.0.1:").contains("missing port after"));
        assert!(reason("127.0.0.1:http").contains("port `http` is not a number"));
        assert!(reason("127.0.0.1:70000").contains("port 70000 is out of range"));
        assert!(reason("127.0.0.1:0").contains("port 0"));
        assert!(reason(":50051").contains("missing host"));
        assert!(reason("::1:50051").contains("brackets"));
        assert!(reason("[::1:50051").contains("missing `]`"));
        assert!(reason("[nope]:1").contains("not an IPv6 address"));
        assert!(reason("http://a:1").contains("without a scheme"));
        assert!(reason("a b:1").contains("neither an IP address nor a host name"));
    }

    #[test]
    fn weights_follow_an_equals_sign() {
        let ep: Endpoint = "127.0.0.1:50051=3".parse().unwrap();
        assert_eq!((ep.port(), ep.weight()), (50051, 3));
        assert_eq!(
            ep.to_string(),
            "127.0.0.1:50051",
            "the weight is not part of the address"
        );
        assert!(reason("127.0.0.1:1=0").contains("weight `0`"));
        assert!(reason("127.0.0.1:1=x").contains("weight `x`"));
        assert!(reason("127.0.0.1:1=10001").contains("1 to 10000"));
    }

    #[test]
    fn lists_reject_empty_entries() {
        let list = parse_endpoint_list("a:1, b:2,c:3").unwrap();
        assert_eq!(list.len(), 3);
        assert!(matches!(parse_endpoint_list(" "), Err(Error::NoEndpoints)));
        let err = parse_endpoint_list("a:1,,b:2").unwrap_err().to_string();
        assert!(err.contains("empty address"), "{err}");
    }
}
