//! Discovery through etcd: servers register themselves, clients watch.
//!
//! A server *registers* by writing one key per address under a prefix, attached to a
//! *lease*: a time-to-live that the server renews every third of it. A client lists
//! the prefix once, then *watches* it from the revision it read, so every later
//! registration and removal arrives as an event, in order, with nothing missed.
//!
//! ```text
//! greeter/127.0.0.1:50051  {"Addr":"127.0.0.1:50051","Metadata":{"weight":1}}   lease 7587…
//! greeter/127.0.0.1:50052  {"Addr":"127.0.0.1:50052","Metadata":{"weight":1}}   lease 7588…
//! ```
//!
//! Three ways out of the fleet, all seen by every watching client:
//!
//! - a graceful shutdown revokes the lease: its keys go at once;
//! - a crash (`SIGKILL`, a lost machine) stops the renewals: etcd deletes the keys when
//!   the lease's time-to-live runs out (10 s by default);
//! - an operator deletes the key (`etcdctl del greeter/127.0.0.1:50051`).
//!
//! The value is the JSON that etcd's own Go naming package (`endpoints.Endpoint`)
//! writes, so Go services registered with it are found too; a plain `host:port[=weight]`
//! value works as well, for keys written by hand with `etcdctl put`.
//!
//! When the connection to etcd breaks, the resolver keeps the last list (an etcd
//! outage must not empty the fleet), reconnects with backoff, and lists the prefix
//! again before watching, so nothing that changed meanwhile is missed. The
//! registration likewise re-registers under a new lease if its lease was lost.

use std::{collections::BTreeMap, time::Duration};

use crate::{Endpoint, Error};

#[cfg(feature = "etcd")]
mod client;
#[cfg(all(feature = "etcd", feature = "server"))]
mod registration;
#[cfg(all(feature = "etcd", feature = "server"))]
pub use registration::Registration;

/// How long a registration lives without renewal, unless told otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);

/// An etcd cluster and a key prefix: `etcd://host:port[,host:port...]/prefix`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdTarget {
    /// The cluster's client addresses, `host:port`.
    pub cluster: Vec<String>,
    /// The prefix, without slashes at either end: keys are `{prefix}/{host:port}`.
    pub prefix: String,
}

impl EtcdTarget {
    /// Parses what follows `etcd://`.
    pub(crate) fn parse(rest: &str) -> Result<Self, String> {
        let usage =
            "expected etcd://host:port/prefix (several hosts: etcd://h1:2379,h2:2379/prefix)";
        let (authority, prefix) = rest.split_once('/').ok_or(usage)?;
        let prefix = prefix.trim_matches('/');
        if authority.is_empty() || prefix.is_empty() {
            return Err(usage.into());
        }
        let cluster = authority
            .split(',')
            .map(|address| {
                address
                    .parse::<Endpoint>()
                    .map(|e| e.to_string())
                    .map_err(|e| format!("etcd address: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            cluster,
            prefix: prefix.to_string(),
        })
    }

    /// The key an address registers under.
    pub fn key_for(&self, endpoint: &Endpoint) -> String {
        format!("{}/{endpoint}", self.prefix)
    }

    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    fn watched(&self) -> String {
        format!("{}/", self.prefix)
    }

    /// Without the `etcd` feature there is no etcd client: an `etcd://` target
    /// parses (and prints), but resolving it says what to enable.
    #[cfg(not(feature = "etcd"))]
    pub(crate) async fn resolve(
        &self,
    ) -> Result<tokio::sync::watch::Receiver<Vec<Endpoint>>, Error> {
        Err(Error::Discovery {
            target: self.to_string(),
            reason: "this lb-core was built without its `etcd` feature: enable it \
                     (lb-core = { version = \"0.1\", features = [\"etcd\"] })"
                .into(),
        })
    }
}

impl std::fmt::Display for EtcdTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "etcd://{}/{}", self.cluster.join(","), self.prefix)
    }
}

#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
fn endpoints_of(registered: &BTreeMap<String, Endpoint>) -> Vec<Endpoint> {
    let mut endpoints: Vec<Endpoint> = registered.values().cloned().collect();
    endpoints.sort();
    endpoints.dedup();
    endpoints
}

/// The value etcd's Go naming package writes: `{"Addr": "...", "Metadata": ...}`.
#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
#[derive(serde::Deserialize, serde::Serialize)]
struct NamingValue {
    #[serde(rename = "Addr")]
    addr: String,
    #[serde(rename = "Metadata", default)]
    metadata: Option<serde_json::Value>,
}

/// The endpoint a registration names: from its JSON value, its plain value, or (for
/// an empty value) the last part of its key.
#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
fn parse_registration(key: &str, value: &[u8]) -> Result<Endpoint, String> {
    let text = std::str::from_utf8(value).map_err(|_| "the value is not UTF-8".to_string())?;
    let text = text.trim();
    if text.starts_with('{') {
        let naming: NamingValue =
            serde_json::from_str(text).map_err(|e| format!("the value is not naming JSON: {e}"))?;
        let endpoint: Endpoint = naming.addr.parse().map_err(|e: Error| e.to_string())?;
        // The metadata may say more (Go services put anything there): its weight,
        // priority and locality are read, the rest left alone.
        return match naming.metadata {
            Some(serde_json::Value::Object(metadata)) => {
                super::attributes::with_attributes(endpoint, &metadata)
                    .map_err(|e| format!("Metadata.{e}"))
            }
            _ => Ok(endpoint),
        };
    }
    let text = if text.is_empty() {
        key.rsplit('/').next().unwrap_or_default()
    } else {
        text
    };
    text.parse().map_err(|e: Error| e.to_string())
}

/// The value a server registers `endpoint` with.
#[cfg_attr(not(all(feature = "etcd", feature = "server")), allow(dead_code))]
fn registration_value(endpoint: &Endpoint) -> String {
    let value = NamingValue {
        addr: endpoint.to_string(),
        metadata: Some(metadata(endpoint)),
    };
    serde_json::to_string(&value).unwrap_or_default()
}

/// The metadata of a registration: the weight always, the priority and the locality
/// when they are not the defaults.
#[cfg_attr(not(all(feature = "etcd", feature = "server")), allow(dead_code))]
fn metadata(endpoint: &Endpoint) -> serde_json::Value {
    let mut metadata = serde_json::json!({ "weight": endpoint.weight() });
    if endpoint.priority() != 0 {
        metadata["priority"] = endpoint.priority().into();
    }
    if let Some(locality) = endpoint.locality() {
        metadata["locality"] = serde_json::json!({
            "region": locality.region(),
            "zone": locality.zone(),
            "subZone": locality.sub_zone(),
        });
    }
    metadata
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_name_a_cluster_and_a_prefix() {
        let target = EtcdTarget::parse("127.0.0.1:2379,127.0.0.1:2380/services/greeter/").unwrap();
        assert_eq!(target.cluster, ["127.0.0.1:2379", "127.0.0.1:2380"]);
        assert_eq!(target.prefix, "services/greeter");
        let endpoint: Endpoint = "127.0.0.1:50051".parse().unwrap();
        assert_eq!(
            target.key_for(&endpoint),
            "services/greeter/127.0.0.1:50051"
        );
        assert!(
            EtcdTarget::parse("127.0.0.1:2379")
                .unwrap_err()
                .contains("expected")
        );
        assert!(
            EtcdTarget::parse("127.0.0.1:2379/")
                .unwrap_err()
                .contains("expected")
        );
        assert!(
            EtcdTarget::parse("nope/x")
                .unwrap_err()
                .contains("etcd address")
        );
    }

    #[test]
    fn registrations_are_read_in_every_form() {
        let key = "greeter/127.0.0.1:50051";
        let json = br#"{"Addr":"127.0.0.1:50051","Metadata":{"weight":3}}"#;
        assert_eq!(parse_registration(key, json).unwrap().weight(), 3);
        let go = br#"{"Op":0,"Addr":"127.0.0.1:50051","Metadata":null}"#;
        assert_eq!(parse_registration(key, go).unwrap().port(), 50051);
        assert_eq!(
            parse_registration(key, b"127.0.0.1:50052=2")
                .unwrap()
                .weight(),
            2
        );
        assert_eq!(parse_registration(key, b"").unwrap().port(), 50051);
        assert!(parse_registration(key, b"{oops").is_err());
        assert!(parse_registration(key, b"nope").is_err());
        let zoned = br#"{"Addr":"127.0.0.1:50051","Metadata":{"weight":2,"priority":1,"locality":"zone-b"}}"#;
        let zoned = parse_registration(key, zoned).unwrap();
        assert_eq!(zoned.to_spec(), "127.0.0.1:50051=2@zone-b#1");
        let bad = br#"{"Addr":"127.0.0.1:50051","Metadata":{"priority":"high"}}"#;
        assert!(
            parse_registration(key, bad)
                .unwrap_err()
                .contains("Metadata.priority"),
            "the field is named"
        );
        let located: Endpoint = "127.0.0.1:50054@us-east/zone-c#2".parse().unwrap();
        let value = registration_value(&located);
        assert_eq!(parse_registration(key, value.as_bytes()).unwrap(), located);
        // What a server writes, a client reads.
        let endpoint: Endpoint = "127.0.0.1:50053=5".parse().unwrap();
        let value = registration_value(&endpoint);
        assert_eq!(parse_registration(key, value.as_bytes()).unwrap(), endpoint);
    }
}
