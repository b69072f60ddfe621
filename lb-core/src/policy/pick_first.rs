//! `pick_first`: every call goes to the first endpoint that is ready.
//!
//! This is gRPC's default policy, and the baseline that shows what "no balancing" looks
//! like: with endpoints `[a, b, c]` all ready, every call goes to `a`. If `a` is down,
//! every call goes to `b`, so it gives failover, not load spreading.
//!
//! Reference: grpc-go `balancer/pickfirst`. gRPC's real pick_first keeps one connection
//! and walks the list only when it fails; here every endpoint has its connection and the
//! picker simply skips those that are not ready, which gives the same choice.

use std::sync::Arc;
use rand::RngCore;
use serde::Deserialize;

use super::{PickContext, PickError, Picker, PolicyConfig, label};
use crate::EndpointState;

/// The name users type.
pub const NAME: &str = "pick_first";

/// `pick_first` has no settings: `{"pick_first": {}}` in service-config JSON.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PickFirstConfig {}

impl PolicyConfig for PickFirstConfig {
    const NAME: &'static str = NAME;
    const SUMMARY: &'static str = "every call to the first reachable endpoint (no balancing)";

    fn build(&self, _: &[EndpointState], _: &mut dyn RngCore) -> Arc<dyn Picker> {
        Arc::new(PickFirst)
    }
}

/// Picks the first ready endpoint in list order.
#[derive(Debug, Default, Clone, Copy)]
pub struct PickFirst;

impl Picker for PickFirst {
    fn name(&self) -> &'static str {
        NAME
    }

    fn pick(
        &self,
        endpoints: &[EndpointState],
        ctx: &mut PickContext<'_>,
    ) -> Result<usize, PickError> {
        let i = endpoints
            .iter()
            .position(EndpointState::is_ready)
            .ok_or_else(|| PickError::none_ready(endpoints))?;
        ctx.explain(|| {
            let n = endpoints.len();
            format!("{NAME}: first ready of {n} -> {}", label(&endpoints[i]))
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
    fn always_the_first_ready_one() {
        let endpoints = ready(3);
        assert_eq!(histogram(&PickFirst, &endpoints, 300), vec![300, 0, 0]);

        endpoints[0].set_connectivity(Connectivity::TransientFailure);
        assert_eq!(histogram(&PickFirst, &endpoints, 300), vec![0, 300, 0]);

        endpoints[1].set_connectivity(Connectivity::Connecting);
        assert_eq!(histogram(&PickFirst, &endpoints, 300), vec![0, 0, 300]);
    }
}
