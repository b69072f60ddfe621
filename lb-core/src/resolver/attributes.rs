//! An endpoint's attributes as JSON, the same in an endpoints file and in an etcd
//! registration's metadata: `"weight": 3`, `"priority": 1`, and `"locality": "zone-a"`
//! or `{"region": "us-east", "zone": "zone-a", "subZone": "rack-1"}`.

use serde_json::{Map, Value};

use crate::Endpoint;
use crate::endpoint::MAX_WEIGHT;
use crate::locality::{Locality, MAX_PRIORITY};

/// `endpoint` with the attributes among `fields` (other fields are the caller's to
/// check); an error names the field.
pub(super) fn with_attributes(
    mut endpoint: Endpoint,
    fields: &Map<String, Value>,
) -> Result<Endpoint, String> {
    if let Some(weight) = fields.get("weight") {
        let weight = weight
            .as_u64()
            .and_then(|w| u32::try_from(w).ok())
            .filter(|w| (1..=MAX_WEIGHT).contains(w))
            .ok_or_else(|| {
                format!("weight: {weight} is not a whole number from 1 to {MAX_WEIGHT}")
            })?;
        endpoint = endpoint.with_weight(weight);
    }
    if let Some(priority) = fields.get("priority") {
        let priority = priority
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .filter(|&p| p <= MAX_PRIORITY)
            .ok_or_else(|| {
                format!("priority: {priority} is not a whole number from 0 to {MAX_PRIORITY}")
            })?;
        endpoint = endpoint.with_priority(priority);
    }
    match fields.get("locality") {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => {
            endpoint = endpoint.with_locality(text.parse().map_err(|e| format!("locality: {e}"))?);
        }
        Some(Value::Object(parts)) => {
            if let Some(field) = parts
                .keys()
                .find(|k| !["region", "zone", "subZone"].contains(&k.as_str()))
            {
                return Err(format!(
                    "locality: unknown field `{field}` (known: region, zone, subZone)"
                ));
            }
            let part = |name: &str| parts.get(name).and_then(Value::as_str).unwrap_or("");
            let locality = Locality::new(part("region"), part("zone"), part("subZone"))
                .map_err(|e| format!("locality: {e}"))?;
            endpoint = endpoint.with_locality(locality);
        }
        Some(other) => {
            return Err(format!(
                "locality: expected \"zone\" or an object, not {other}"
            ));
        }
    }
    Ok(endpoint)
}
