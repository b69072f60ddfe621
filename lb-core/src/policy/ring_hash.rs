//! `ring_hash`: consistent hashing. Calls with the same key (a request header, by
//! default `x-lb-key`) go to the same endpoint, and when an endpoint leaves, only the
//! keys it had move.
//!
//! Picture a circle of 2⁶⁴ positions. Each endpoint is hashed onto it at many points
//! (`hash("10.0.0.1:80_0")`, `hash("10.0.0.1:80_1")`, ...), more points for a larger
//! weight. A call's key is hashed onto the same circle, and the call goes to the owner
//! of the first point at or after it, clockwise. Remove an endpoint and its points
//! vanish: its keys fall to the next points along, which belong to the others, while
//! every other key still finds the same point as before.
//!
//! Worked example with a 6-point ring (positions in 0..100 for readability):
//! points `a:10, b:35, c:50, a:70, b:85, c:95`. Key hash 40 → c (first point ≥ 40 is
//! 50). Key hash 97 → wraps to a:10. Remove `c`: key 40 → a:70, key 97 still → a:10.
//!
//! How many points: at least `minRingSize` (default 1024) in all, in proportion to
//! weight. Per unit of weight the count is rounded *up to a power of two*, so that it
//! only changes when the fleet's total weight crosses a power of two: removing one of
//! 10 equal endpoints keeps 128 points each, and only the removed endpoint's keys move.
//! (gRPC sizes the ring to the exact minimum instead, so every removal moves a few keys
//! between survivors.)
//!
//! Lookup is a binary search, O(log ring size). If the owner is not ready, the walk
//! continues clockwise to the next ready endpoint, as gRPC does. A call without the
//! header goes to a random ready endpoint. Hashes are XXH64 (seed 0), as in gRPC.
//!
//! References: D. Karger et al., "Consistent Hashing and Random Trees", STOC 1997; gRPC
//! `ring_hash` (gRFC A42, A76); Envoy's RING_HASH.

use xxhash_rust::xxh64::xxh64;

use std::sync::Arc;

use rand::RngCore;
use serde::Deserialize;

use super::{
    Keyed, PickContext, PickError, Picker, PolicyConfig, config, first_ready, key_or_random,
    label,
};
use crate::EndpointState;

/// The name users type.
pub const NAME: &str = "ring_hash";

/// gRPC's largest ring.
pub const MAX_RING_SIZE: usize = 8_388_608;

/// Settings of `ring_hash`: `{"ring_hash": {"minRingSize": 1024, "requestHashHeader": "x-lb-key"}}`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct RingHashConfig {
    /// The ring has at least this many points.
    pub min_ring_size: usize,
    /// And at most this many (gRPC's limit is 8,388,608).
    pub max_ring_size: usize,
    /// The request header (gRPC metadata key, lower case) whose value is hashed.
    pub request_hash_header: String,
}

impl Default for RingHashConfig {
    fn default() -> Self {
        Self {
            min_ring_size: 1024,
            max_ring_size: MAX_RING_SIZE,
            request_hash_header: config::DEFAULT_HASH_HEADER.into(),
        }
    }
}

impl PolicyConfig for RingHashConfig {
    const NAME: &'static str = NAME;
    const SUMMARY: &'static str = "consistent hashing of a request header on a ring";

    fn validate(&mut self) -> Result<(), String> {
        if self.min_ring_size == 0 || self.min_ring_size > self.max_ring_size {
            return Err(format!(
                "need 1 <= minRingSize <= maxRingSize, got {} and {}",
                self.min_ring_size, self.max_ring_size
            ));
        }
        if self.max_ring_size > MAX_RING_SIZE {
            return Err(format!("maxRingSize is at most {MAX_RING_SIZE}"));
        }
        config::check_header(&self.request_hash_header)
    }

    fn build(&self, endpoints: &[EndpointState], _: &mut dyn RngCore) -> Arc<dyn Picker> {
        Arc::new(RingHash::new(endpoints, self))
    }

    fn hash_header(&self) -> Option<&str> {
        Some(&self.request_hash_header)
    }
}

/// Consistent hashing on a ring of points.
#[derive(Debug, Clone)]
pub struct RingHash {
    /// (point hash, endpoint index), sorted by hash.
    ring: Vec<(u64, usize)>,
    header: String,
}

impl RingHash {
    /// Builds the ring for `endpoints` (all of them: one that is not ready keeps its
    /// points and is skipped at lookup, so its keys come back to it when it returns).
    pub fn new(endpoints: &[EndpointState], config: &RingHashConfig) -> Self {
        let total_weight: u64 = endpoints.iter().map(|e| u64::from(e.weight())).sum();
        let mut ring = Vec::new();
        if total_weight > 0 {
            let min = config.min_ring_size.max(1) as u64;
            let max = (config.max_ring_size as u64).max(min);
            let mut per_weight = min.div_ceil(total_weight).next_power_of_two();
            while per_weight > 1 && per_weight * total_weight > max {
                per_weight /= 2;
            }
            ring.reserve((per_weight * total_weight) as usize);
            for (index, endpoint) in endpoints.iter().enumerate() {
                let address = endpoint.endpoint().to_string();
                for point in 0..per_weight * u64::from(endpoint.weight()) {
                    let hash = xxh64(format!("{address}_{point}").as_bytes(), 0);
                    ring.push((hash, index));
                }
            }
            ring.sort_unstable();
        }
        Self {
            ring,
            header: config.request_hash_header.clone(),
        }
    }

    /// How many points the ring has.
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    /// Whether the ring is empty (no endpoints).
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }
}

impl Picker for RingHash {
    fn name(&self) -> &'static str {
        NAME
    }

    fn pick(
        &self,
        endpoints: &[EndpointState],
        ctx: &mut PickContext<'_>,
    ) -> Result<usize, PickError> {
        if endpoints.is_empty() || self.ring.is_empty() {
            return Err(PickError::none_ready(endpoints));
        }
        let key = match key_or_random(NAME, &self.header, endpoints, ctx)? {
            Keyed::Key(key) => key,
            Keyed::Random(i) => return Ok(i),
        };
        let hash = xxh64(key, 0);
        let start = self.ring.partition_point(|&(point, _)| point < hash);
        let len = self.ring.len();
        let owners = (0..len).map(|step| self.ring[(start + step) % len].1);
        let i = first_ready(owners, endpoints)?;
        ctx.explain(|| {
            let key = String::from_utf8_lossy(key);
            format!(
                "{NAME}: key \"{key}\" hash {hash:016x}, ring point {} of {len} -> {}",
                start % len,
                label(&endpoints[i])
            )
        });
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Connectivity;
    use crate::policy::testing::*;

    #[test]
    fn the_ring_has_at_least_the_minimum_points_by_weight() {
        let config = RingHashConfig::default();
        assert_eq!(RingHash::new(&ready(10), &config).len(), 1280);
        assert_eq!(RingHash::new(&ready(9), &config).len(), 9 * 128);
        assert_eq!(RingHash::new(&weighted(&[3, 1]), &config).len(), 4 * 256);
    }

    #[test]
    fn the_same_key_always_reaches_the_same_endpoint() {
        let endpoints = ready(5);
        assert_keys_stick(
            &RingHash::new(&endpoints, &RingHashConfig::default()),
            &endpoints,
        );
    }

    #[test]
    fn removing_one_of_ten_moves_only_its_own_keys() {
        let ten = ready(10);
        let nine: Vec<EndpointState> = ten.iter().take(9).cloned().collect();
        let config = RingHashConfig::default();
        let (before, after) = (RingHash::new(&ten, &config), RingHash::new(&nine, &config));
        let mut moved = 0;
        for key in 0..10_000 {
            let key = format!("k{key}");
            let (was, is) = (owner(&before, &ten, &key), owner(&after, &nine, &key));
            if was != 9 {
                assert_eq!(was, is, "key {key} moved from a survivor");
            } else {
                moved += 1;
            }
        }
        assert!(
            (500..1_500).contains(&moved),
            "the removed endpoint had {moved} keys"
        );
    }

    #[test]
    fn a_down_owner_passes_its_keys_on_and_gets_them_back() {
        let endpoints = ready(4);
        let picker = RingHash::new(&endpoints, &RingHashConfig::default());
        let key = (0..)
            .map(|k| format!("k{k}"))
            .find(|k| owner(&picker, &endpoints, k) == 2)
            .unwrap();
        endpoints[2].set_connectivity(Connectivity::TransientFailure);
        assert_ne!(owner(&picker, &endpoints, &key), 2);
        endpoints[2].set_connectivity(Connectivity::Ready);
        assert_eq!(owner(&picker, &endpoints, &key), 2);
    }

    #[test]
    fn no_key_means_random() {
        let endpoints = ready(3);
        let picker = RingHash::new(&endpoints, &RingHashConfig::default());
        let counts = histogram(&picker, &endpoints, 30_000);
        assert!(chi_square_uniform(&counts) < 13.82, "{counts:?}");
    }
}
