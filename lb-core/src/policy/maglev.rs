//! `maglev`: consistent hashing with Google's Maglev lookup table: O(1) lookups and an
//! almost perfectly even spread.
//!
//! The table has `M` slots (a prime, default 65,537). Each endpoint has its own
//! *preference order* of the slots, a permutation from two hashes of its address:
//! `offset = h1 mod M`, `skip = h2 mod (M-1) + 1`, preference `j` is slot
//! `(offset + j·skip) mod M` (a prime `M` makes this visit every slot). The endpoints
//! take turns: each claims its most preferred slot that is still free, until all are
//! full. A call's key is hashed to a slot, and the slot's owner gets the call.
//!
//! Worked example, `M = 7`, two endpoints. `a` prefers 3, 0, 4, 1, 5, 2, 6; `b` prefers
//! 0, 2, 4, 6, 1, 3, 5. Turns: a→3, b→0, a→4 (0 taken), b→2, a→1, b→6, a→5. Table:
//! `[b, a, b, a, a, a, b]`: 4 slots for `a`, 3 for `b`, as even as 7 allows.
//!
//! Turn-taking gives every endpoint `M/N` slots ± 1, so shares are even to a fraction
//! of a percent (a ring needs many points for that). When an endpoint leaves, the
//! others keep nearly all of their preferred slots: a little more than `1/N` of the
//! keys move, not only the leaving endpoint's (the paper's "minimal disruption" is
//! close to, not exactly, the ring's). Weights give an endpoint that many turns per
//! round. If a slot's owner is not ready, the following slots are tried in order; a
//! call without the key header goes to a random ready endpoint.
//!
//! Reference: D. E. Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load
//! Balancer", NSDI 2016; Envoy's MAGLEV.

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
pub const NAME: &str = "maglev";

/// Settings of `maglev`: `{"maglev": {"tableSize": 65537, "requestHashHeader": "x-lb-key"}}`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct MaglevConfig {
    /// The lookup table's size; must be a prime (default 65,537).
    pub table_size: usize,
    /// The request header (gRPC metadata key, lower case) whose value is hashed.
    pub request_hash_header: String,
}

impl Default for MaglevConfig {
    fn default() -> Self {
        Self {
            table_size: 65_537,
            request_hash_header: config::DEFAULT_HASH_HEADER.into(),
        }
    }
}

impl PolicyConfig for MaglevConfig {
    const NAME: &'static str = NAME;
    const SUMMARY: &'static str = "consistent hashing of a request header, Maglev table";

    fn validate(&mut self) -> Result<(), String> {
        if !is_prime(self.table_size) {
            return Err(format!(
                "tableSize {} is not a prime (try 65537 or 5003)",
                self.table_size
            ));
        }
        config::check_header(&self.request_hash_header)
    }

    fn build(&self, endpoints: &[EndpointState], _: &mut dyn RngCore) -> Arc<dyn Picker> {
        Arc::new(Maglev::new(endpoints, self))
    }

    fn hash_header(&self) -> Option<&str> {
        Some(&self.request_hash_header)
    }
}

/// Whether `n` is prime (trial division: table sizes are small).
pub fn is_prime(n: usize) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// Consistent hashing with a Maglev table.
#[derive(Debug, Clone)]
pub struct Maglev {
    table: Vec<u32>,
    header: String,
}

impl Maglev {
    /// Fills the table for `endpoints` (all of them, as [`RingHash`](super::ring_hash::RingHash)
    /// does: one that is not ready is skipped at lookup).
    pub fn new(endpoints: &[EndpointState], config: &MaglevConfig) -> Self {
        let size = config.table_size.max(1);
        let header = config.request_hash_header.clone();
        if endpoints.is_empty() {
            return Self {
                table: Vec::new(),
                header,
            };
        }
        let m = size as u64;
        let permutations: Vec<(u64, u64)> = endpoints
            .iter()
            .map(|e| {
                let address = e.endpoint().to_string();
                let offset = xxh64(address.as_bytes(), 0) % m;
                let skip = if m > 1 {
                    xxh64(address.as_bytes(), 1) % (m - 1) + 1
                } else {
                    1
                };
                (offset, skip)
            })
            .collect();
        const EMPTY: u32 = u32::MAX;
        let mut table = vec![EMPTY; size];
        let mut next = vec![0u64; endpoints.len()];
        let mut filled = 0;
        'fill: loop {
            for (index, endpoint) in endpoints.iter().enumerate() {
                for _ in 0..endpoint.weight() {
                    let (offset, skip) = permutations[index];
                    let mut slot = ((offset + next[index] * skip) % m) as usize;
                    while table[slot] != EMPTY {
                        next[index] += 1;
                        slot = ((offset + next[index] * skip) % m) as usize;
                    }
                    table[slot] = index as u32;
                    next[index] += 1;
                    filled += 1;
                    if filled == size {
                        break 'fill;
                    }
                }
            }
        }
        Self { table, header }
    }

    /// How many slots each endpoint owns, by index.
    pub fn slots(&self, endpoints: usize) -> Vec<usize> {
        let mut counts = vec![0; endpoints];
        for &owner in &self.table {
            if let Some(count) = counts.get_mut(owner as usize) {
                *count += 1;
            }
        }
        counts
    }
}

impl Picker for Maglev {
    fn name(&self) -> &'static str {
        NAME
    }

    fn pick(
        &self,
        endpoints: &[EndpointState],
        ctx: &mut PickContext<'_>,
    ) -> Result<usize, PickError> {
        if endpoints.is_empty() || self.table.is_empty() {
            return Err(PickError::none_ready(endpoints));
        }
        let key = match key_or_random(NAME, &self.header, endpoints, ctx)? {
            Keyed::Key(key) => key,
            Keyed::Random(i) => return Ok(i),
        };
        let len = self.table.len();
        let slot = (xxh64(key, 0) % len as u64) as usize;
        // Almost always the first slot; the walk only matters while an owner is down.
        let owners = (0..len).map(|step| self.table[(slot + step) % len] as usize);
        let i = first_ready(owners, endpoints)?;
        ctx.explain(|| {
            let key = String::from_utf8_lossy(key);
            format!(
                "{NAME}: key \"{key}\" -> slot {slot} of {len} -> {}",
                label(&endpoints[i])
            )
        });
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::*;

    #[test]
    fn equal_weights_get_equal_slots_within_two_percent() {
        for n in [3, 10] {
            let endpoints = ready(n);
            let picker = Maglev::new(&endpoints, &MaglevConfig::default());
            let slots = picker.slots(n);
            let fair = 65_537.0 / n as f64;
            let largest = *slots.iter().max().unwrap() as f64;
            assert!(largest <= fair * 1.02, "n = {n}: {slots:?}");
            assert_eq!(slots.iter().sum::<usize>(), 65_537);
        }
    }

    #[test]
    fn weights_give_more_slots() {
        let endpoints = weighted(&[3, 1]);
        let slots = Maglev::new(&endpoints, &MaglevConfig::default()).slots(2);
        let share = slots[0] as f64 / 65_537.0;
        assert!((share - 0.75).abs() < 0.01, "{slots:?}");
    }

    #[test]
    fn the_same_key_always_reaches_the_same_endpoint() {
        let endpoints = ready(5);
        assert_keys_stick(
            &Maglev::new(&endpoints, &MaglevConfig::default()),
            &endpoints,
        );
    }

    #[test]
    fn removing_one_of_ten_moves_at_most_fifteen_percent_of_keys() {
        let ten = ready(10);
        let nine: Vec<EndpointState> = ten.iter().take(9).cloned().collect();
        let config = MaglevConfig::default();
        let (before, after) = (Maglev::new(&ten, &config), Maglev::new(&nine, &config));
        let keys = 20_000;
        let moved = (0..keys)
            .map(|k| format!("k{k}"))
            .filter(|k| owner(&before, &ten, k) != owner(&after, &nine, k))
            .count();
        assert!(
            moved as f64 <= 0.15 * keys as f64,
            "{moved} of {keys} keys moved"
        );
        assert!(
            moved as f64 >= 0.09 * keys as f64,
            "{moved}: the removed one's keys must move"
        );
    }

    #[test]
    fn the_worked_example_fills_every_slot() {
        let endpoints = ready(2);
        let config = MaglevConfig {
            table_size: 7,
            ..MaglevConfig::default()
        };
        let slots = Maglev::new(&endpoints, &config).slots(2);
        assert_eq!(slots.iter().sum::<usize>(), 7);
        assert!(slots.iter().all(|&s| s == 3 || s == 4), "{slots:?}");
    }

    #[test]
    fn primes() {
        assert!(is_prime(65_537) && is_prime(5_003) && is_prime(2));
        assert!(!is_prime(65_536) && !is_prime(1) && !is_prime(0));
    }
}
