//! Target URIs, endpoint lists and endpoints files: what `--servers` and
//! `file:///...` turn into. Whatever the text, parsing returns a value or an error,
//! never panics, and what it returns prints back to text that parses to the same.
#![no_main]

use lb_core::{Endpoint, resolver::Target};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(target) = text.parse::<Target>() {
        let again = target.to_string();
        assert!(
            again.parse::<Target>().is_ok(),
            "{text:?} parsed, but its display {again:?} does not"
        );
    }
    if let Ok(list) = lb_core::parse_endpoint_list(text) {
        for endpoint in list {
            round_trip(&endpoint);
        }
    }
    if let Ok(endpoint) = text.parse::<Endpoint>() {
        round_trip(&endpoint);
    }
    if let Ok(list) = lb_core::resolver::parse_endpoints_json(text) {
        list.iter().for_each(round_trip);
    }
});

fn round_trip(endpoint: &Endpoint) {
    let text = format!("{endpoint}={}", endpoint.weight());
    let again: Endpoint = text
        .parse()
        .unwrap_or_else(|e| panic!("{endpoint:?} prints as {text:?}, which fails: {e}"));
    assert_eq!(&again, endpoint, "{text:?}");
    assert!((1..=lb_core::endpoint::MAX_WEIGHT).contains(&endpoint.weight()));
}
