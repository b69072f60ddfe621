//! Endpoint addresses: what `--servers 127.0.0.1:50051,127.0.0.1:50052` turns into.
//!
//! An [`Endpoint`] is one backend a call can be sent to, written `host:port`. The host
//! may be an IPv4 address, a bracketed IPv6 address (`[::1]:50051`) or a DNS name
//! (`localhost:50051`); the port is required, since gRPC has no default port. After the
//! address, in any order, may come:
//!
//! - `=W`: a weight for the weighted policies, 1 to 10,000 (default 1);
//! - `@LOCALITY`: where it runs, `zone`, `region/zone` or `region/zone/sub_zone`
//!   ([`Locality`]), which `weighted_target_experimental` hands endpoints to its
//!   targets by;
//! - `#P`: its priority, 0 (the highest, the default) to 99, which
//!   `priority_experimental` hands endpoints to its children by.
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
//! let backup: Endpoint = "127.0.0.1:50053@us-east/zone-c#1".parse().unwrap();
//! assert_eq!(backup.locality().unwrap().zone(), "zone-c");
//! assert_eq!(backup.priority(), 1);
//! assert_eq!(backup.to_string(), "127.0.0.1:50053", "attributes are not the address");
//!
//! let err = "127.0.0.1".parse::<Endpoint>().unwrap_err();
//! assert!(err.to_string().contains("missing port"));
//! ```
//!
//! The ground floor. May import: `error`, `locality`.

use std::{fmt, net::Ipv6Addr, str::FromStr, sync::Arc};

use crate::Error;
use crate::locality::{Locality, MAX_PRIORITY};

/// The largest weight an endpoint may have.
pub const MAX_WEIGHT: u32 = 10_000;

/// One backend address, `host:port`, with a weight, and where it runs: a locality and a
/// priority. Two endpoints are the same only if all of these are.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    // Shared, not copied: an endpoint is cloned into every response (`PickedEndpoint`).
    host: Arc<str>,
    port: u16,
    weight: u32,
    locality: Option<Arc<Locality>>,
    priority: u32,
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

    /// Where it runs, if the list or the resolver said.
    pub fn locality(&self) -> Option<&Locality> {
        self.locality.as_deref()
    }

    /// The same address in `locality`.
    pub fn with_locality(mut self, locality: Locality) -> Self {
        self.locality = Some(Arc::new(locality));
        self
    }

    /// Its priority: 0, the highest and the default, to [`MAX_PRIORITY`].
    pub fn priority(&self) -> u32 {
        self.priority
    }

    /// The same address at priority `priority` (at most [`MAX_PRIORITY`]).
    pub fn with_priority(mut self, priority: u32) -> Self {
        self.priority = priority.min(MAX_PRIORITY);
        self
    }

    /// The address with its attributes, as a list takes it back:
    /// `127.0.0.1:50051=3@zone-a#1` (only those that are not the defaults).
    pub fn to_spec(&self) -> String {
        let mut spec = self.to_string();
        if self.weight != 1 {
            spec.push_str(&format!("={}", self.weight));
        }
        if let Some(locality) = &self.locality {
            spec.push_str(&format!("@{locality}"));
        }
        if self.priority != 0 {
            spec.push_str(&format!("#{}", self.priority));
        }
        spec
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
        let trimmed = input.trim();
        // The address ends where the first attribute begins: `=W`, `@LOCALITY`, `#P`.
        let end = trimmed.find(['=', '@', '#']).unwrap_or(trimmed.len());
        let (text, mut rest) = (trimmed[..end].trim(), &trimmed[end..]);
        let (mut weight, mut locality, mut priority) = (None, None, None);
        while let Some(mark) = rest.chars().next() {
            let value_end = rest[1..]
                .find(['=', '@', '#'])
                .map_or(rest.len(), |i| i + 1);
            let value = rest[1..value_end].trim();
            rest = &rest[value_end..];
            let twice = |what: &str| invalid(format!("{what} given twice"));
            match mark {
                '=' => {
                    let w = match value.parse::<u32>() {
                        Ok(w) if (1..=MAX_WEIGHT).contains(&w) => w,
                        _ => {
                            return Err(invalid(format!(
                                "weight `{value}` is not a whole number from 1 to {MAX_WEIGHT}"
                            )));
                        }
                    };
                    if weight.replace(w).is_some() {
                        return Err(twice("a weight (=W)"));
                    }
                }
                '@' => {
                    let l: Locality = value.parse().map_err(invalid)?;
                    if locality.replace(l).is_some() {
                        return Err(twice("a locality (@LOCALITY)"));
                    }
                }
                _ => {
                    let p = match value.parse::<u32>() {
                        Ok(p) if p <= MAX_PRIORITY => p,
                        _ => {
                            return Err(invalid(format!(
                                "priority `{value}` is not a whole number from 0 to {MAX_PRIORITY}"
                            )));
                        }
                    };
                    if priority.replace(p).is_some() {
                        return Err(twice("a priority (#P)"));
                    }
                }
            }
        }
        let weight = weight.unwrap_or(1);
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
            locality: locality.map(Arc::new),
            priority: priority.unwrap_or(0),
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
    fn localities_and_priorities_follow_in_any_order() {
        let ep: Endpoint = "127.0.0.1:50051#2@zone-a=3".parse().unwrap();
        assert_eq!((ep.weight(), ep.priority()), (3, 2));
        assert_eq!(ep.locality().map(Locality::name), Some("zone-a"));
        assert_eq!(ep.to_spec(), "127.0.0.1:50051=3@zone-a#2");
        assert_eq!(ep.to_spec().parse::<Endpoint>().unwrap(), ep);
        let plain: Endpoint = "[::1]:1".parse().unwrap();
        assert_eq!((plain.locality(), plain.priority()), (None, 0));
        assert_ne!(
            "127.0.0.1:1@zone-a".parse::<Endpoint>().unwrap(),
            "127.0.0.1:1@zone-b".parse::<Endpoint>().unwrap(),
            "another locality is another endpoint"
        );
        assert!(reason("127.0.0.1:1#100").contains("priority `100`"));
        assert!(reason("127.0.0.1:1#x").contains("priority `x`"));
        assert!(reason("127.0.0.1:1@").contains("empty locality"));
        assert!(reason("127.0.0.1:1@a@b").contains("locality (@LOCALITY) given twice"));
        assert!(reason("127.0.0.1:1=2=3").contains("weight (=W) given twice"));
        assert!(reason("127.0.0.1:1@zone a").contains("zone `zone a`"));
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
