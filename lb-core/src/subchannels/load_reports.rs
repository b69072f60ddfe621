//! Out-of-band load reports (gRFC A51): a stream on the endpoint's connection on which
//! its server sends an ORCA report every period, for the policies whose weights follow
//! load (`weighted_round_robin` with `enableOobLoadReport`).

use std::sync::{Arc, atomic::Ordering};

use tracing::info;

use super::subchannel::Subchannel;
use crate::sync::lock;
use crate::transport::wire::Wire;

/// The out-of-band load-report stream of one connection; dropping it ends the stream.
pub(crate) struct LoadReports {
    task: tokio::task::JoinHandle<()>,
}

impl LoadReports {
    /// Opens the stream on `sub`'s connection, if `period` (nanoseconds) asks for one.
    pub(crate) fn start(sub: &Arc<Subchannel>, period: u64) -> Option<Self> {
        if period == 0 {
            return None;
        }
        let wire = lock(&sub.connection).as_ref()?.0.clone();
        let task = tokio::spawn(stream_load_reports(
            wire,
            sub.clone(),
            std::time::Duration::from_nanos(period),
        ));
        Some(Self { task })
    }
}

impl Drop for LoadReports {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Says that an out-of-band stream is open for as long as it lives. It lives in the
/// stream's task, so that it is dropped with the task, after the task's last step: an
/// aborted task cannot raise the flag after it was lowered.
struct StreamOpen(Arc<Subchannel>);

impl StreamOpen {
    fn new(sub: Arc<Subchannel>) -> Self {
        sub.oob_reports.store(true, Ordering::Relaxed);
        Self(sub)
    }
}

impl Drop for StreamOpen {
    fn drop(&mut self) {
        self.0.oob_reports.store(false, Ordering::Relaxed);
    }
}

/// Asks the server for a load report every `period` on
/// `xds.service.orca.v3.OpenRcaService/StreamCoreMetrics` (gRFC A51's out-of-band
/// reporting), and hands each to the endpoint, until the stream or the connection ends.
/// A server that does not serve the stream (UNIMPLEMENTED) keeps being read from its
/// answers' trailers.
async fn stream_load_reports(wire: Wire, sub: Arc<Subchannel>, period: std::time::Duration) {
    use crate::orca::{self, OrcaLoadReport, OrcaLoadReportRequest, ProtoDuration};
    let endpoint = sub.state.endpoint().clone();
    let mut grpc = tonic::client::Grpc::new(wire).max_decoding_message_size(orca::MAX_REPORT_BYTES);
    if grpc.ready().await.is_err() {
        return;
    }
    let request = OrcaLoadReportRequest {
        report_interval: Some(ProtoDuration::from_std(period)),
        request_cost_names: Vec::new(),
    };
    let codec = tonic_prost::ProstCodec::<OrcaLoadReportRequest, OrcaLoadReport>::default();
    let path = http::uri::PathAndQuery::from_static(orca::STREAM_CORE_METRICS);
    let mut stream = match grpc
        .server_streaming(tonic::Request::new(request), path, codec)
        .await
    {
        Ok(response) => response.into_inner(),
        Err(status) => {
            info!(%endpoint, code = ?status.code(), message = status.message(),
                "no out-of-band load reports: reading them from the trailers");
            return;
        }
    };
    let _open = StreamOpen::new(sub.clone());
    loop {
        match stream.message().await {
            Ok(Some(report)) => sub.state.record_load(&report, crate::clock::now_nanos()),
            Ok(None) => break,
            Err(status) => {
                tracing::debug!(%endpoint, %status, "out-of-band load reports ended");
                break;
            }
        }
    }
}
