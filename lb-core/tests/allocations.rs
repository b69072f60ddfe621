//! What the balancer adds to a call in heap allocations, counted, not timed: the same
//! 2,000 calls through a plain tonic `Channel` and through a `Balancer`, to the same
//! in-process server, one at a time. Allocation counts do not depend on how busy the
//! machine is, so this can be asserted where a speed could not.

use std::time::Duration;

use greeter_proto::{HelloRequest, MyServiceClient};
use lb_core::policy::RoundRobinConfig;
use lb_core::{Balancer, Endpoint, Policy};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

const CALLS: u64 = 2_000;

/// Allocations per call, over `CALLS` calls after a warm-up.
async fn per_call<T>(client: &mut MyServiceClient<T>) -> f64
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    for _ in 0..200 {
        client
            .say_hello(HelloRequest { name: "a".into() })
            .await
            .expect("ok");
    }
    let region = Region::new(GLOBAL);
    for _ in 0..CALLS {
        client
            .say_hello(HelloRequest { name: "a".into() })
            .await
            .expect("ok");
    }
    region.change().allocations as f64 / CALLS as f64
}

#[tokio::test(flavor = "current_thread")]
async fn the_balancer_adds_few_allocations_to_a_call() {
    let servers = greeter_server::spawn(greeter_server::Config::on_ports(&[0]))
        .await
        .expect("starts");
    let addr = servers.addrs()[0];
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connects");
    let direct = per_call(&mut MyServiceClient::new(channel)).await;

    let endpoint: Endpoint = addr.to_string().parse().expect("valid");
    let balancer = Balancer::builder([endpoint])
        .policy(Policy::new(RoundRobinConfig::default()))
        .seed(1)
        .build()
        .expect("builds");
    balancer.wait_settled(Duration::from_secs(5)).await;
    let balanced = per_call(&mut MyServiceClient::new(balancer)).await;

    let added = balanced - direct;
    println!(
        "allocations per call (client and server): direct {direct:.1}, balancer {balanced:.1}, added {added:.1}"
    );
    // Counted on 2026-12-02 with valgrind's dhat (bench/examples/call_cost.rs, the
    // client alone): 34 allocations per call through the balancer, as many as through
    // a `Channel` (it was 16 more before the balancer drove hyper itself,
    // `lb-core/src/transport/wire.rs`; here, with the server in the same process, it
    // is one fewer). The balancer's own: the boxed call future (1), the request's
    // head copied for a possible retry (3), hyper's per-call future boxed before it is
    // spawned (1, which saves copying a connection-sized future into every task), and
    // the `PickedEndpoint` extension (2, in the request's map, moved to the response).
    // What a `Channel` makes and the balancer does not: the buffer's message and the
    // boxed layers under it, and the boxed request and response bodies. None grows
    // with the number of endpoints. A change that adds one should say why.
    assert!(
        added <= 0.5,
        "the balancer added {added:.1} allocations per call: no more than a plain \
         Channel makes is the bound"
    );
    servers.shutdown().await.expect("clean shutdown");
}
