//! A parent policy from outside lb-core, registered, over real servers in two zones:
//! calls stay in the client's zone, spill when it is down, and come back.

use std::collections::BTreeMap;

use greeter_proto::{HelloRequest, MyServiceClient};
use lb_core::{Balancer, Connectivity, Endpoint, PickedEndpoint, Policy};

/// Where `n` calls went, by zone.
async fn zones(balancer: &Balancer, n: usize) -> BTreeMap<String, usize> {
    let mut client = MyServiceClient::new(balancer.clone());
    let mut zones = BTreeMap::new();
    for _ in 0..n {
        let response = client
            .say_hello(HelloRequest { name: "z".into() })
            .await
            .expect("every call is answered");
        let picked = response
            .extensions()
            .get::<PickedEndpoint>()
            .expect("tagged");
        let zone = picked
            .0
            .locality()
            .map(|l| l.name().to_string())
            .unwrap_or_default();
        *zones.entry(zone).or_insert(0) += 1;
    }
    zones
}

#[tokio::test]
async fn calls_stay_in_the_zone_spill_when_it_is_down_and_come_back() {
    zone_affinity::register().expect("registers");
    let policy: Policy = r#"{"loadBalancingConfig": [{"zone_affinity": {"zone": "zone-a"}}]}"#
        .parse()
        .expect("the registered name works in a service config");
    assert!(Policy::names().contains(&"zone_affinity"));

    let local = greeter_server::spawn(greeter_server::Config::on_ports(&[0, 0]))
        .await
        .expect("zone a starts");
    let remote = greeter_server::spawn(greeter_server::Config::on_ports(&[0]))
        .await
        .expect("zone b starts");
    let place = |addr: &std::net::SocketAddr, zone: &str| -> Endpoint {
        format!("{addr}@{zone}").parse().expect("an endpoint")
    };
    let ports: Vec<u16> = local.addrs().iter().map(|a| a.port()).collect();
    let mut endpoints: Vec<Endpoint> = local.addrs().iter().map(|a| place(a, "zone-a")).collect();
    endpoints.push(place(&remote.addrs()[0], "zone-b"));
    let balancer = Balancer::builder(endpoints)
        .policy(policy)
        .seed(3)
        .build()
        .expect("builds");
    balancer
        .wait_settled(std::time::Duration::from_secs(5))
        .await;
    assert_eq!(
        zones(&balancer, 100).await,
        BTreeMap::from([("zone-a".into(), 100)])
    );

    // Zone a goes away: its calls spill to zone b, none fails.
    local.shutdown().await.expect("zone a stops");
    let mut changes = balancer.changes();
    while balancer
        .endpoints()
        .iter()
        .take(2)
        .any(|s| s.connectivity == Connectivity::Ready)
    {
        changes.changed().await.expect("the balancer is alive");
    }
    assert_eq!(
        zones(&balancer, 100).await,
        BTreeMap::from([("zone-b".into(), 100)])
    );

    // Zone a is back on its ports: calls come back to it.
    let _local = greeter_server::spawn(greeter_server::Config::on_ports(&ports))
        .await
        .expect("zone a restarts");
    while !balancer
        .endpoints()
        .iter()
        .take(2)
        .all(|s| s.connectivity == Connectivity::Ready)
    {
        changes.changed().await.expect("the balancer is alive");
    }
    assert_eq!(
        zones(&balancer, 100).await,
        BTreeMap::from([("zone-a".into(), 100)])
    );
    drop(remote);
}
