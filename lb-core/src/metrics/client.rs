//! The balancer's metrics: per endpoint, read at scrape time from the counters the
//! balancer keeps anyway.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex, PoisonError, Weak},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Unit,
};

use super::Registry;
use crate::{Balancer, Connectivity, subchannels::Health};

/// Per-endpoint metrics of the balancers it [watches](BalancerMetrics::watch), read
/// at scrape time from the counters the balancer keeps anyway.
#[derive(Clone, Debug)]
pub struct BalancerMetrics {
    target: Arc<str>,
    watched: Arc<Mutex<Vec<Weak<crate::call::router::Router>>>>,
}

impl BalancerMetrics {
    /// Registers the balancer metrics in `registry`, labelled `grpc_target=target`.
    pub fn register(registry: &mut Registry, target: &str) -> Self {
        let metrics = Self {
            target: escape_label_value(target).into(),
            watched: Arc::default(),
        };
        registry.register_collector(Box::new(metrics.clone()));
        metrics
    }

    /// Reports `balancer`'s endpoints from now on, until it is dropped.
    pub fn watch(&self, balancer: &Balancer) {
        let mut watched = self.watched.lock().unwrap_or_else(PoisonError::into_inner);
        watched.retain(|b| b.strong_count() > 0);
        watched.push(balancer.downgrade());
    }
}

type Labels<'a> = [(&'static str, &'a str); 3];

/// A metric's name, its help, and how to read it from an endpoint's status.
type Described<T> = (&'static str, &'static str, fn(&crate::EndpointStatus) -> T);

impl Collector for BalancerMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let balancers: Vec<_> = self
            .watched
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        // (policy, endpoint address, status) for every endpoint of every balancer.
        // Two rows must never share a label set (Prometheus rejects such a scrape):
        // the same address twice (with two weights, or in two balancers with the same
        // policy) is told apart by a suffix, `#2`, `#3`, ...
        let mut seen = HashSet::new();
        // gRFC A78's weighted_round_robin counters, summed over such balancers.
        let mut wrr_counts: Option<[u64; 3]> = None;
        let rows: Vec<(&'static str, String, crate::EndpointStatus)> = balancers
            .iter()
            .flat_map(|b| {
                let (policy, statuses, counts) = b.report();
                if policy == crate::policy::weighted_round_robin::NAME {
                    let sums = wrr_counts.get_or_insert([0; 3]);
                    for (sum, count) in sums.iter_mut().zip(counts) {
                        *sum += count;
                    }
                }
                statuses.into_iter().map(move |s| (policy, s))
            })
            .map(|(policy, status)| {
                let address = status.endpoint.to_string();
                let mut label = address.clone();
                let mut n = 1;
                while !seen.insert((policy, label.clone())) {
                    n += 1;
                    label = format!("{address}#{n}");
                }
                (policy, label, status)
            })
            .collect();
        let labels = |policy, endpoint| -> Labels<'_> {
            [
                ("grpc_target", &self.target),
                ("grpc_lb_policy", policy),
                ("grpc_lb_endpoint", endpoint),
            ]
        };
        let counters: [Described<u64>; 6] = [
            (
                "grpc_client_attempt_started",
                "Calls sent to the endpoint: its picks, retries included",
                |s| s.calls,
            ),
            (
                "grpc_lb_endpoint_retries",
                "Calls that failed on the endpoint before an answer and were sent to another",
                |s| s.retries,
            ),
            (
                "grpc_lb_endpoint_ejections",
                "Times outlier detection ejected the endpoint",
                |s| s.ejections,
            ),
            (
                "grpc_subchannel_connection_attempts_succeeded",
                "Connection attempts that succeeded",
                |s| s.connects,
            ),
            (
                "grpc_subchannel_connection_attempts_failed",
                "Connection attempts that failed",
                |s| s.connect_failures,
            ),
            (
                "grpc_subchannel_disconnections",
                "Connections to the endpoint that were lost",
                |s| s.disconnections,
            ),
        ];
        for (name, help, value) in counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (policy, endpoint, status) in &rows {
                ConstCounter::new(value(status))
                    .encode(family.encode_family(&labels(policy, endpoint))?)?;
            }
        }
        let gauges: [Described<i64>; 4] = [
            (
                "grpc_lb_endpoint_in_flight",
                "Calls to the endpoint under way now",
                |s| s.in_flight as i64,
            ),
            (
                "grpc_lb_endpoint_ejected",
                "1 while outlier detection keeps the endpoint out",
                |s| i64::from(s.ejected),
            ),
            (
                "grpc_lb_endpoint_health_serving",
                "1 if the endpoint's last health answer was SERVING",
                |s| i64::from(s.health == Health::Serving),
            ),
            (
                "grpc_subchannel_open_connections",
                "Open call connections to the endpoint (more than 1 when one was full: gRFC A105)",
                |s| i64::try_from(s.connections).unwrap_or(i64::MAX),
            ),
        ];
        for (name, help, value) in gauges {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (policy, endpoint, status) in &rows {
                ConstGauge::new(value(status))
                    .encode(family.encode_family(&labels(policy, endpoint))?)?;
            }
        }

        // Only for policies with weights (weighted_round_robin); gRFC A78 has the
        // weights as a histogram over endpoints (grpc.lb.wrr.endpoint_weights), this
        // is the same figure per endpoint.
        let mut family = encoder.encode_descriptor(
            "grpc_lb_endpoint_weight",
            "The weight the policy picks the endpoint by now (weighted_round_robin: reported \
             by the server's load reports, or static, after slow start)",
            None,
            MetricType::Gauge,
        )?;
        for (policy, endpoint, status) in &rows {
            if let Some(weight) = status.weight {
                ConstGauge::new(weight).encode(family.encode_family(&labels(policy, endpoint))?)?;
            }
        }

        // gRFC A78's counters, for balancers using weighted_round_robin.
        let a78: [(&str, &str); 3] = [
            (
                "grpc_lb_wrr_rr_fallback",
                "weighted_round_robin weight updates that found fewer than two usable weights \
                 and used the static ones (gRFC A78 grpc.lb.wrr.rr_fallback)",
            ),
            (
                "grpc_lb_wrr_endpoint_weight_not_yet_usable",
                "Endpoints without a usable weight yet (no report, or in the blackout \
                 period), once per weight update (grpc.lb.wrr.endpoint_weight_not_yet_usable)",
            ),
            (
                "grpc_lb_wrr_endpoint_weight_stale",
                "Endpoints whose last load report was older than weightExpirationPeriod, once \
                 per weight update (grpc.lb.wrr.endpoint_weight_stale)",
            ),
        ];
        for ((name, help), count) in a78.into_iter().zip(wrr_counts.into_iter().flatten()) {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(count).encode(family.encode_family(&[
                ("grpc_target", &*self.target),
                ("grpc_lb_policy", crate::policy::weighted_round_robin::NAME),
            ])?)?;
        }

        let mut family = encoder.encode_descriptor(
            "grpc_lb_endpoint_calls",
            "Calls that ended, by outcome: ok, or failed because of the endpoint",
            None,
            MetricType::Counter,
        )?;
        for (policy, endpoint, status) in &rows {
            for (outcome, value) in [("ok", status.calls_ok), ("failed", status.calls_failed)] {
                let [a, b, c] = labels(policy, endpoint);
                ConstCounter::new(value).encode(family.encode_family(&[
                    a,
                    b,
                    c,
                    ("outcome", outcome),
                ])?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "grpc_lb_endpoint_state",
            "1 for the endpoint's connectivity state, 0 for the others",
            None,
            MetricType::Gauge,
        )?;
        for (policy, endpoint, status) in &rows {
            for state in [
                Connectivity::Idle,
                Connectivity::Connecting,
                Connectivity::Ready,
                Connectivity::TransientFailure,
            ] {
                let [a, b, c] = labels(policy, endpoint);
                ConstGauge::new(i64::from(status.connectivity == state))
                    .encode(family.encode_family(&[a, b, c, ("state", state.as_str())])?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "grpc_client_attempt_duration",
            "How long calls to the endpoint took, from the pick to the end of the response",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (policy, endpoint, status) in &rows {
            let snapshot = &status.durations;
            family
                .encode_family(&labels(policy, endpoint))?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                snapshot.sum_seconds,
                snapshot.count,
                &snapshot.buckets(),
                None,
            )?;
        }
        Ok(())
    }
}

/// A label value as the text format wants it (prometheus-client writes values as they
/// are): backslash, double quote and newline escaped. Only the target needs it; every
/// other label value is checked text (addresses, method names, fixed words).
pub(super) fn escape_label_value(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(
            escape_label_value("file:///a\"b\\c\nd"),
            "file:///a\\\"b\\\\c\\nd"
        );
    }
}
