//! A policy from outside lb-core, registered: parsed from its name and from
//! service-config JSON, listed among the valid names, balancing real servers, and in
//! the simulator's default list.

use std::{collections::BTreeMap, time::Duration};

use greeter_proto::{HelloRequest, MyServiceClient};
use lb_core::{Balancer, PickedEndpoint, Policy};
use lb_sim::{Scenario, simulate};
use least_loaded::LeastLoadedConfig;

#[test]
fn a_registered_policy_parses_by_name_and_from_service_config() {
    least_loaded::register().expect("registers");
    least_loaded::register().expect("registering again does no harm");

    let by_name: Policy = "least_loaded".parse().expect("a known name");
    assert_eq!(by_name, Policy::new(LeastLoadedConfig::default()));
    assert_eq!(by_name.to_string(), "least_loaded");

    let json = r#"{"loadBalancingConfig":[{"grpclb":{}},{"least_loaded":{"weighted":false}}]}"#;
    let by_json: Policy = json.parse().expect("valid service config");
    assert_eq!(by_json, Policy::new(LeastLoadedConfig { weighted: false }));

    let err = r#"{"least_loaded":{"weights":true}}"#
        .parse::<Policy>()
        .expect_err("an unknown field");
    assert!(
        err.to_string()
            .contains("least_loaded: unknown field `weights`"),
        "{err}"
    );

    assert!(Policy::names().contains(&"least_loaded"));
    assert!(
        Policy::all().contains(&by_name),
        "compare and simulate list it"
    );
    let err = "least_loadd"
        .parse::<Policy>()
        .expect_err("a typo")
        .to_string();
    assert!(err.contains("valid policies: pick_first,"), "{err}");
    assert!(err.ends_with(", least_loaded"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_policy_balances_real_servers() {
    least_loaded::register().expect("registers");
    let servers = greeter_server::spawn(greeter_server::Config::on_ports(&[0, 0, 0]))
        .await
        .expect("servers start");
    let endpoints = lb_core::parse_endpoint_list(&servers.endpoints_list()).expect("valid");
    let balancer = Balancer::builder(endpoints.clone())
        .policy("least_loaded".parse().expect("registered"))
        .seed(3)
        .build()
        .expect("builds");
    assert_eq!(balancer.policy_name(), "least_loaded");
    balancer.wait_settled(Duration::from_secs(10)).await;

    let mut client = MyServiceClient::new(balancer);
    let mut per_server: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..60 {
        let response = client
            .say_hello(HelloRequest { name: "ll".into() })
            .await
            .expect("every call answered");
        let picked = response
            .extensions()
            .get::<PickedEndpoint>()
            .expect("tagged")
            .0
            .to_string();
        assert_eq!(response.into_inner().message, "Hello, ll!");
        *per_server.entry(picked).or_default() += 1;
    }
    // One call at a time: every endpoint is equally idle, and ties go to a random one.
    assert_eq!(per_server.len(), 3, "{per_server:?}");
    assert!(per_server.values().all(|&n| n >= 5), "{per_server:?}");
    servers.shutdown().await.expect("clean shutdown");
}

#[test]
fn a_registered_policy_runs_in_the_simulator() {
    least_loaded::register().expect("registers");
    let scenario = Scenario::with_backends(&["2ms", "2ms", "20ms"]).expect("valid");
    let policy: Policy = "least_loaded".parse().expect("registered");
    let report = simulate(&scenario, &policy).report;
    assert_eq!(report.policy, "least_loaded");
    assert!(report.succeeded > 0);
    let round_robin = simulate(&scenario, &"round_robin".parse().expect("built in")).report;
    // Load-aware: the slow backend (the third) gets a smaller share than in turn.
    let slow_share = |r: &greeter_client::Report| {
        r.backends[2].calls as f64 / r.backends.iter().map(|s| s.calls).sum::<u64>() as f64
    };
    assert!(
        slow_share(&report) < slow_share(&round_robin),
        "least_loaded {:.3} vs round_robin {:.3}",
        slow_share(&report),
        slow_share(&round_robin)
    );
}
