//! Settings the demos share: the client's `--outlier-detection`, and the simulator's.

use std::time::Duration;

use lb_core::OutlierDetection;

/// Outlier detection tuned for a demo (`--outlier-detection` of `run` and `simulate`):
/// gRFC A50's logic, with times in seconds rather than minutes (ejected 5 s, then
/// 10 s, ... at most 30 s; reviewed every second), judging from 3 servers up, by
/// success rate and by failure percentage (above 85 %).
pub fn demo_outlier_detection() -> OutlierDetection {
    OutlierDetection {
        interval: Duration::from_secs(1),
        base_ejection_time: Duration::from_secs(5),
        max_ejection_time: Duration::from_secs(30),
        max_ejection_percent: 50,
        consecutive_failures: Some(5),
        success_rate: Some(lb_core::balancer::SuccessRate {
            stdev_factor: 1900,
            request_volume: 20,
            minimum_hosts: 3,
            enforcement_percentage: 100,
        }),
        failure_percentage: Some(lb_core::balancer::FailurePercentage {
            threshold: 85,
            request_volume: 20,
            minimum_hosts: 3,
            enforcement_percentage: 100,
        }),
    }
}
