//! Membership in one step: a new endpoint set, from `set_endpoints` or from a
//! resolver that the balancer follows, is applied as one diff. Replacing 3 of 5
//! endpoints builds the picker once, for the 2 survivors, and no picker is ever built
//! for (so no pick ever sees) a set half-way between the old and the new.

use std::{
    collections::BTreeSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use greeter_proto::{HelloRequest, MyServiceClient};
use greeter_server::{Config, Servers};
use lb_core::{
    Balancer, BuildPicker, Connectivity, Endpoint, EndpointState, PickContext, PickError, Picker,
};

/// What the policy saw: the endpoint set of every picker built, and the size of every
/// set a pick was made from.
#[derive(Default)]
struct Seen {
    builds: Mutex<Vec<Vec<String>>>,
    pick_sizes: Mutex<BTreeSet<usize>>,
}

/// A policy that records what it is given and picks the first ready endpoint.
struct Recording(Arc<Seen>);

impl BuildPicker for Recording {
    fn name(&self) -> &'static str {
        "recording"
    }

    fn build(&self, endpoints: &[EndpointState], _: &mut dyn rand::RngCore) -> Arc<dyn Picker> {
        let set = endpoints.iter().map(|e| e.endpoint().to_string()).collect();
        self.0.builds.lock().expect("not poisoned").push(set);
        Arc::new(RecordingPicker(self.0.clone()))
    }
}

struct RecordingPicker(Arc<Seen>);

impl Picker for RecordingPicker {
    fn name(&self) -> &'static str {
        "recording"
    }

    fn pick(
        &self,
        endpoints: &[EndpointState],
        _: &mut PickContext<'_>,
    ) -> Result<usize, PickError> {
        self.0
            .pick_sizes
            .lock()
            .expect("not poisoned")
            .insert(endpoints.len());
        endpoints
            .iter()
            .position(EndpointState::is_ready)
            .ok_or_else(|| PickError::none_ready(endpoints))
    }
}

/// Five servers, and a balancer over them with the recording policy, all READY.
async fn five_ready(seen: &Arc<Seen>) -> (Servers, Vec<Endpoint>, Balancer) {
    let servers = greeter_server::spawn(Config::on_ports(&[0; 5]))
        .await
        .expect("servers start");
    let endpoints = lb_core::parse_endpoint_list(&servers.endpoints_list()).expect("valid");
    let balancer = Balancer::builder(endpoints.clone())
        .build_picker(Arc::new(Recording(seen.clone())))
        .seed(5)
        .build()
        .expect("builds");
    let states = balancer.wait_settled(Duration::from_secs(10)).await;
    assert!(
        states.iter().all(|s| s.connectivity == Connectivity::Ready),
        "{states:?}"
    );
    assert_eq!(balancer.usable_endpoints(), 5);
    (servers, endpoints, balancer)
}

/// Three addresses where nothing listens (bound on port 0, then let go): endpoints
/// that stay out of the usable set, so that only the removals change it.
async fn three_unreachable() -> Vec<Endpoint> {
    let mut endpoints = Vec::new();
    for _ in 0..3 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let addr = listener.local_addr().expect("has an address");
        endpoints.push(addr.to_string().parse().expect("valid"));
    }
    endpoints
}

/// Waits until every endpoint of `balancer` is READY or TRANSIENT_FAILURE.
async fn wait_for_failures(balancer: &Balancer) {
    let mut changes = balancer.changes();
    let settled = async {
        while !balancer.endpoints().iter().all(|s| {
            matches!(
                s.connectivity,
                Connectivity::Ready | Connectivity::TransientFailure
            )
        }) {
            changes.changed().await.expect("the balancer is alive");
        }
    };
    tokio::time::timeout(Duration::from_secs(10), settled)
        .await
        .expect("the unreachable endpoints fail to connect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_three_of_five_builds_the_picker_once_and_no_pick_sees_half_a_set() {
    let seen = Arc::new(Seen::default());
    let (servers, old, balancer) = five_ready(&seen).await;
    let new: Vec<Endpoint> = old[..2]
        .iter()
        .cloned()
        .chain(three_unreachable().await)
        .collect();
    let survivors: Vec<String> = old[..2].iter().map(ToString::to_string).collect();

    // Calls go on in the background while the set changes under them.
    let stop = Arc::new(AtomicBool::new(false));
    let caller = tokio::spawn({
        let mut client = MyServiceClient::new(balancer.clone());
        let stop = stop.clone();
        async move {
            let mut calls = 0u32;
            while !stop.load(Ordering::Relaxed) && calls < 100_000 {
                client
                    .say_hello(HelloRequest { name: "m".into() })
                    .await
                    .expect("a survivor answers every call");
                calls += 1;
            }
            calls
        }
    });
    let builds_before = seen.builds.lock().expect("not poisoned").len();
    balancer.set_endpoints(&new).expect("applies");
    let after_apply: Vec<Vec<String>> =
        seen.builds.lock().expect("not poisoned")[builds_before..].to_vec();
    assert_eq!(
        after_apply,
        vec![survivors.clone()],
        "one build, for the survivors"
    );
    assert_eq!(balancer.usable_endpoints(), 2);

    // The new endpoints try, fail, and back off: that changes no usable set.
    wait_for_failures(&balancer).await;
    stop.store(true, Ordering::Relaxed);
    let calls = caller.await.expect("the caller ran");
    assert!(calls > 0);
    let builds = seen.builds.lock().expect("not poisoned").clone();
    assert_eq!(builds.len(), builds_before + 1, "{builds:?}");
    let sizes = seen.pick_sizes.lock().expect("not poisoned").clone();
    assert!(
        sizes.iter().all(|&n| n == 5 || n == 2),
        "picks saw sets of sizes {sizes:?}"
    );
    let now: Vec<Endpoint> = balancer
        .endpoints()
        .into_iter()
        .map(|s| s.endpoint)
        .collect();
    assert_eq!(now, new, "survivors first, in order, then the new ones");
    servers.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followed_resolver_update_is_one_step_too() {
    let seen = Arc::new(Seen::default());
    let (servers, old, balancer) = five_ready(&seen).await;
    let (resolver, updates) = tokio::sync::watch::channel(old.clone());
    balancer.follow(updates);
    let new: Vec<Endpoint> = old[..2]
        .iter()
        .cloned()
        .chain(three_unreachable().await)
        .collect();
    let builds_before = seen.builds.lock().expect("not poisoned").len();

    let mut changes = balancer.changes();
    resolver.send_replace(new.clone());
    let applied = async {
        while balancer.usable_endpoints() != 2 {
            changes.changed().await.expect("the balancer is alive");
        }
    };
    tokio::time::timeout(Duration::from_secs(10), applied)
        .await
        .expect("the update is applied");
    wait_for_failures(&balancer).await;
    let builds = seen.builds.lock().expect("not poisoned")[builds_before..].to_vec();
    let survivors: Vec<String> = old[..2].iter().map(ToString::to_string).collect();
    assert_eq!(builds, vec![survivors]);
    servers.shutdown().await.expect("clean shutdown");
}
