//! lb-core's own declaration of the xDS ORCA messages (`lb_core::orca`, prost's derive,
//! no protoc) against protoc's code for the same `.proto` files (`greeter_proto::xds`,
//! compiled from `proto/xds/`): whatever one encodes, the other decodes to the same
//! values.

use std::collections::HashMap;

use greeter_proto::xds::data::orca::v3 as protoc;
use greeter_proto::xds::service::orca::v3 as protoc_service;
use lb_core::orca::{OrcaLoadReport, OrcaLoadReportRequest, ProtoDuration};
use proptest::prelude::*;
use prost::Message;

fn metrics() -> impl Strategy<Value = HashMap<String, f64>> {
    proptest::collection::hash_map("[a-z_]{1,12}", -1e9f64..1e9, 0..4)
}

proptest! {
    // Seeded: the same cases every run.
    #![proptest_config(ProptestConfig {
        cases: 256,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x0_2ca),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_report_means_the_same_to_both(
        cpu in 0f64..4.0, mem in 0f64..1.0, rps in any::<u64>(), rps_fractional in 0f64..1e7,
        eps in 0f64..1e6, application in 0f64..2.0,
        request_cost in metrics(), utilization in metrics(), named in metrics(),
    ) {
        let ours = OrcaLoadReport {
            cpu_utilization: cpu,
            mem_utilization: mem,
            rps,
            request_cost: request_cost.clone(),
            utilization: utilization.clone(),
            rps_fractional,
            eps,
            named_metrics: named.clone(),
            application_utilization: application,
        };
        let theirs = protoc::OrcaLoadReport::decode(ours.encode_to_vec().as_slice()).unwrap();
        prop_assert_eq!(theirs.cpu_utilization, cpu);
        prop_assert_eq!(theirs.mem_utilization, mem);
        #[allow(deprecated)]
        let their_rps = theirs.rps;
        prop_assert_eq!(their_rps, rps);
        prop_assert_eq!(&theirs.request_cost, &request_cost);
        prop_assert_eq!(&theirs.utilization, &utilization);
        prop_assert_eq!(theirs.rps_fractional, rps_fractional);
        prop_assert_eq!(theirs.eps, eps);
        prop_assert_eq!(&theirs.named_metrics, &named);
        prop_assert_eq!(theirs.application_utilization, application);
        // And back.
        let back = OrcaLoadReport::decode(theirs.encode_to_vec().as_slice()).unwrap();
        prop_assert_eq!(back, ours);
    }

    #[test]
    fn a_request_means_the_same_to_both(
        seconds in 0i64..1_000_000, nanos in 0i32..1_000_000_000,
        names in proptest::collection::vec("[a-z]{1,8}", 0..3),
    ) {
        let ours = OrcaLoadReportRequest {
            report_interval: Some(ProtoDuration { seconds, nanos }),
            request_cost_names: names.clone(),
        };
        let theirs =
            protoc_service::OrcaLoadReportRequest::decode(ours.encode_to_vec().as_slice()).unwrap();
        let interval = theirs.report_interval.expect("an interval");
        prop_assert_eq!((interval.seconds, interval.nanos), (seconds, nanos));
        prop_assert_eq!(&theirs.request_cost_names, &names);
        let back = OrcaLoadReportRequest::decode(theirs.encode_to_vec().as_slice()).unwrap();
        prop_assert_eq!(back, ours);
    }
}
