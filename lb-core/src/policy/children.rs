//! A parent policy's children: the machinery `priority_experimental` and
//! `weighted_target_experimental` share, and yours can use.
//!
//! A *parent* policy does not pick endpoints itself: it hands each endpoint to one of
//! its children (by the endpoint's priority, or its locality), each child being a
//! policy of its own with its own settings, and for each call it chooses a child,
//! whose picker then chooses the endpoint. This is gRPC's balancer tree, as its xDS
//! stack builds it: `priority` over `weighted_target` over `round_robin`, say.
//!
//! [`Children::build`] does the splitting and the building: given the children's
//! policies and which child each endpoint belongs to, it gives each child its share of
//! the usable endpoints and of all of them, and builds each child's picker for its
//! share. [`Children::pick`] lets one child pick, and turns its answer (an index into
//! the child's share) back into an index into the parent's endpoints.
//!
//! Worked example: usable endpoints `[a@zone-a, b@zone-b, c@zone-a]` and children
//! `zone-a`, `zone-b`, each `round_robin`. Child 0 gets `[a, c]` (parent indices
//! `[0, 2]`), child 1 gets `[b]` (`[1]`). When child 0's round robin picks its
//! endpoint 1, that is `c`, and [`Children::pick`] returns 2.

use std::sync::Arc;

use rand::RngCore;

use super::config::Policy;
use super::picker::{BuildPicker, EndpointSet, PickContext, PickError, Picker};
use crate::{Endpoint, EndpointState};

/// A parent's children, each with its endpoints and its picker.
pub struct Children {
    children: Vec<Child>,
}

struct Child {
    name: String,
    /// For each of the child's usable endpoints, its index in the parent's.
    index: Vec<usize>,
    usable: Vec<EndpointState>,
    all: Vec<EndpointState>,
    picker: Arc<dyn Picker>,
}

impl Children {
    /// Splits `set` among the children `specs` (name and policy, in the parent's order)
    /// by `child_of`, which says which child an endpoint belongs to (`None`: none; the
    /// endpoint is then used by no child), and builds each child's picker over its
    /// share, usable and all.
    pub fn build(
        specs: &[(String, Policy)],
        set: EndpointSet<'_>,
        rng: &mut dyn RngCore,
        child_of: impl Fn(&Endpoint) -> Option<usize>,
    ) -> Self {
        let mut children: Vec<(Vec<usize>, Vec<EndpointState>, Vec<EndpointState>)> =
            vec![(Vec::new(), Vec::new(), Vec::new()); specs.len()];
        for (i, state) in set.usable.iter().enumerate() {
            if let Some(child) = child_of(state.endpoint()).and_then(|c| children.get_mut(c)) {
                child.0.push(i);
                child.1.push(state.clone());
            }
        }
        for state in set.all {
            if let Some(child) = child_of(state.endpoint()).and_then(|c| children.get_mut(c)) {
                child.2.push(state.clone());
            }
        }
        let children = specs
            .iter()
            .zip(children)
            .map(|((name, policy), (index, usable, all))| {
                let picker = policy.build_set(
                    EndpointSet {
                        usable: &usable,
                        all: &all,
                    },
                    rng,
                );
                Child {
                    name: name.clone(),
                    index,
                    usable,
                    all,
                    picker,
                }
            })
            .collect();
        Self { children }
    }

    /// How many children there are.
    pub fn len(&self) -> usize {
        self.children.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }

    /// Child `i`'s name.
    pub fn name(&self, i: usize) -> &str {
        &self.children[i].name
    }

    /// Child `i`'s usable endpoints (those its picker was built for).
    pub fn usable(&self, i: usize) -> &[EndpointState] {
        &self.children[i].usable
    }

    /// All of child `i`'s endpoints, usable or not.
    pub fn all(&self, i: usize) -> &[EndpointState] {
        &self.children[i].all
    }

    /// Lets child `i` pick, and returns the endpoint's index among the parent's usable
    /// endpoints.
    pub fn pick(&self, i: usize, ctx: &mut PickContext<'_>) -> Result<usize, PickError> {
        let child = &self.children[i];
        let picked = child.picker.pick(&child.usable, ctx)?;
        child
            .index
            .get(picked)
            .copied()
            .ok_or_else(|| PickError::none_ready(&child.usable))
    }

    /// Since when child `i` has been starting (clock nanoseconds), if it is: none of
    /// its endpoints usable, and some still connecting for the first time (see
    /// [`EndpointState::is_starting`]). A child starts when its first endpoint joins.
    pub fn starting_since(&self, i: usize) -> Option<u64> {
        let child = &self.children[i];
        if !child.usable.is_empty() || !child.all.iter().any(EndpointState::is_starting) {
            return None;
        }
        child.all.iter().map(EndpointState::created_at).min()
    }

    /// The earliest time after `now` at which a child's picker changes by itself.
    pub fn next_change(&self, now: u64) -> Option<u64> {
        self.children
            .iter()
            .filter_map(|c| c.picker.next_change(now))
            .min()
    }
}
