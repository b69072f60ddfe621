//! ORCA load reports: how a server tells its clients how loaded it is (gRFC A51).
//!
//! ORCA (Open Request Cost Aggregation, from the xDS project) defines one message,
//! `xds.data.orca.v3.OrcaLoadReport`, and two ways to send it:
//!
//! - **per call**, in the response's trailer `endpoint-load-metrics-bin` (the message's
//!   bytes, base64 as every `-bin` header is): the client learns the server's load with
//!   every answer, at no extra round trip;
//! - **out of band**, on a stream the client opens,
//!   `xds.service.orca.v3.OpenRcaService/StreamCoreMetrics`, on which the server sends
//!   a report every `report_interval` the client asked for (never more often than the
//!   server allows).
//!
//! A load-aware policy (gRPC's `weighted_round_robin`, gRFC A58) turns the reports into
//! weights: `weight = qps / (utilization + penalty × eps / qps)`.
//!
//! Worked example: a server with `--capacity 4` that serves 400 calls a second of
//! 10 ms each is busy all the time (`application_utilization` 1.0, 400 `rps`); one with
//! `--capacity 1` serves 100 (1.0, 100): their weights are 400 and 100, so a weighted
//! round robin sends them four calls for one, as their sizes say.
//!
//! The messages here are the xDS protos' own fields and numbers, written with prost's
//! derive macros, so that this crate needs no `protoc` at all; the `.proto` files are
//! in the repository's `proto/xds/` (compiled there, and a test checks both encode the
//! same bytes). The server side, `orca::server`, is behind the `server` feature.
//!
//! On the ground floor (the messages are plain data;
//! [`EndpointState`](crate::EndpointState) takes them in). May import: `sync`.

use base64::Engine as _;
use std::collections::HashMap;

#[cfg(feature = "server")]
pub mod server;

/// The trailer (or trailers-only header) that carries a per-call report.
pub const TRAILER: &str = "endpoint-load-metrics-bin";

/// [`TRAILER`] as a header name, made once (looked up in every response).
pub const TRAILER_NAME: http::HeaderName = http::HeaderName::from_static(TRAILER);

/// The out-of-band service, as gRPC names it.
pub const SERVICE: &str = "xds.service.orca.v3.OpenRcaService";

/// The out-of-band stream's path.
pub const STREAM_CORE_METRICS: &str = "/xds.service.orca.v3.OpenRcaService/StreamCoreMetrics";

/// `xds.data.orca.v3.OrcaLoadReport`: one server's load.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OrcaLoadReport {
    /// CPU utilisation as a fraction of the machine's (may exceed 1.0 past soft limits).
    #[prost(double, tag = "1")]
    pub cpu_utilization: f64,
    /// Memory utilisation, as a fraction.
    #[prost(double, tag = "2")]
    pub mem_utilization: f64,
    /// Requests per second, whole (deprecated by the protos for `rps_fractional`).
    #[prost(uint64, tag = "3")]
    pub rps: u64,
    /// Per-call costs, by name (in a per-call report: this call's).
    #[prost(map = "string, double", tag = "4")]
    pub request_cost: HashMap<String, f64>,
    /// Resource utilisations, by name, as fractions.
    #[prost(map = "string, double", tag = "5")]
    pub utilization: HashMap<String, f64>,
    /// Requests per second.
    #[prost(double, tag = "6")]
    pub rps_fractional: f64,
    /// Errors per second.
    #[prost(double, tag = "7")]
    pub eps: f64,
    /// Application-specific metrics, by name.
    #[prost(map = "string, double", tag = "8")]
    pub named_metrics: HashMap<String, f64>,
    /// The application's own idea of its utilisation (preferred over CPU when set).
    #[prost(double, tag = "9")]
    pub application_utilization: f64,
}

/// `google.protobuf.Duration`.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct ProtoDuration {
    /// Whole seconds.
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// And nanoseconds.
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

impl ProtoDuration {
    /// As a `std::time::Duration` (negative durations are zero).
    pub fn to_std(self) -> std::time::Duration {
        let seconds = u64::try_from(self.seconds).unwrap_or(0);
        let nanos = u32::try_from(self.nanos).unwrap_or(0).min(999_999_999);
        std::time::Duration::new(seconds, nanos)
    }

    /// From a `std::time::Duration` (saturating).
    pub fn from_std(duration: std::time::Duration) -> Self {
        Self {
            seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(duration.subsec_nanos()).unwrap_or(0),
        }
    }
}

/// `xds.service.orca.v3.OrcaLoadReportRequest`: what an out-of-band stream asks for.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OrcaLoadReportRequest {
    /// How often to report.
    #[prost(message, optional, tag = "1")]
    pub report_interval: Option<ProtoDuration>,
    /// The request costs wanted (empty: all).
    #[prost(string, repeated, tag = "2")]
    pub request_cost_names: Vec<String>,
}

impl OrcaLoadReport {
    /// The utilisation a weight is computed from (gRFC A58): the application's if it
    /// reports one, else the CPU's.
    pub fn utilization(&self) -> f64 {
        if self.application_utilization > 0.0 {
            self.application_utilization
        } else {
            self.cpu_utilization
        }
    }

    /// The trailer value: the message's bytes in base64, without padding (as gRPC
    /// writes binary metadata).
    pub fn to_trailer(&self) -> http::HeaderValue {
        use prost::Message;
        let text = base64::engine::general_purpose::STANDARD_NO_PAD.encode(self.encode_to_vec());
        // Base64 is always a valid header value.
        http::HeaderValue::try_from(text).unwrap_or_else(|_| http::HeaderValue::from_static(""))
    }

    /// Reads a report from a response's headers or trailers, if one is there.
    pub fn from_headers(headers: &http::HeaderMap) -> Option<Result<Self, OrcaError>> {
        headers.get(TRAILER_NAME).map(Self::from_trailer)
    }

    /// Reads a trailer value (base64, padded or not, as gRPC accepts).
    pub fn from_trailer(value: &http::HeaderValue) -> Result<Self, OrcaError> {
        use prost::Message;
        if value.len() > MAX_REPORT_BYTES * 4 / 3 + 4 {
            return Err(OrcaError::TooLarge(value.len()));
        }
        let bytes = LENIENT
            .decode(value.as_bytes())
            .map_err(|e| OrcaError::Base64(e.to_string()))?;
        Self::decode(bytes.as_slice()).map_err(|e| OrcaError::Decode(e.to_string()))
    }
}

/// The largest report read (a report is tens of bytes; named metrics add a few each).
pub const MAX_REPORT_BYTES: usize = 16 * 1024;

/// Base64 that accepts padding and its absence, as gRPC's binary metadata must.
const LENIENT: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// Why a load report could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OrcaError {
    /// The trailer is not base64.
    #[error("{TRAILER}: not base64: {0}")]
    Base64(String),
    /// The bytes are not an `OrcaLoadReport`.
    #[error("{TRAILER}: not an xds.data.orca.v3.OrcaLoadReport: {0}")]
    Decode(String),
    /// Longer than [`MAX_REPORT_BYTES`] would encode to.
    #[error("{TRAILER}: {0} bytes, more than a load report needs")]
    TooLarge(usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_survives_the_trailer_and_bad_ones_are_named() {
        let report = OrcaLoadReport {
            cpu_utilization: 0.25,
            rps_fractional: 120.5,
            eps: 1.5,
            application_utilization: 0.75,
            named_metrics: HashMap::from([("queue".to_string(), 3.0)]),
            ..OrcaLoadReport::default()
        };
        let value = report.to_trailer();
        assert!(!value.to_str().unwrap().ends_with('='), "unpadded");
        assert_eq!(OrcaLoadReport::from_trailer(&value).unwrap(), report);
        // Padded is accepted too.
        let padded = base64::engine::general_purpose::STANDARD
            .encode(prost::Message::encode_to_vec(&report));
        let padded = http::HeaderValue::try_from(padded).unwrap();
        assert_eq!(OrcaLoadReport::from_trailer(&padded).unwrap(), report);
        assert_eq!(report.utilization(), 0.75, "the application's, when set");
        let bad = http::HeaderValue::from_static("not base64!");
        assert!(matches!(
            OrcaLoadReport::from_trailer(&bad),
            Err(OrcaError::Base64(_))
        ));
        // Valid base64 of bytes that are no report (a field 1 of the wrong type, cut).
        let junk = http::HeaderValue::from_static("Cg");
        assert!(matches!(
            OrcaLoadReport::from_trailer(&junk),
            Err(OrcaError::Decode(_))
        ));
    }

    #[test]
    fn durations_convert_both_ways() {
        let d = std::time::Duration::from_millis(1500);
        assert_eq!(ProtoDuration::from_std(d).to_std(), d);
        let negative = ProtoDuration {
            seconds: -1,
            nanos: 0,
        };
        assert_eq!(negative.to_std(), std::time::Duration::ZERO);
    }
}
