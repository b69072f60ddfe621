//! `--policy`: a policy name or gRPC service-config JSON. Whatever the text, parsing
//! returns a policy or an error naming what is wrong; a policy that parses builds a
//! picker over a few endpoints, and that picker's picks are in range.
#![no_main]

use lb_core::{BuildPicker, Connectivity, EndpointState, PickContext, Policy};
use libfuzzer_sys::fuzz_target;
use rand::{SeedableRng, rngs::SmallRng};

fuzz_target!(|text: &str| {
    let Ok(policy) = text.parse::<Policy>() else {
        return;
    };
    let endpoints: Vec<EndpointState> = ["127.0.0.1:1=3", "127.0.0.1:2", "[::1]:3=10000"]
        .iter()
        .map(|e| {
            let state = EndpointState::new(e.parse().expect("valid"));
            state.set_connectivity(Connectivity::Ready);
            state
        })
        .collect();
    let mut rng = SmallRng::seed_from_u64(1);
    let picker = policy.build(&endpoints, &mut rng);
    let mut headers = http::HeaderMap::new();
    headers.insert("x-lb-key", http::HeaderValue::from_static("key"));
    for headers in [None, Some(&headers)] {
        let mut context = PickContext::new(&mut rng);
        context.headers = headers;
        if let Ok(index) = picker.pick(&endpoints, &mut context) {
            assert!(index < endpoints.len(), "{text:?}: picked {index} of 3");
        }
    }
});
