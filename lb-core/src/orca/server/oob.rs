//! The out-of-band reports: `OpenRcaService/StreamCoreMetrics`, one report every
//! interval the client asks for.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use futures::future::BoxFuture;
use tonic::{Status, body::Body};

use crate::orca::{OrcaLoadReport, OrcaLoadReportRequest};
use crate::sync::lock;

use super::{LoadReporter, MAX_REPORT_INTERVAL};

/// `xds.service.orca.v3.OpenRcaService`: `StreamCoreMetrics` sends the current report
/// every interval the client asks for (at least [`MIN_REPORT_INTERVAL`](super::MIN_REPORT_INTERVAL), or the
/// reporter's minimum), until the client goes away.
#[derive(Clone, Debug)]
pub struct OpenRcaService {
    reporter: LoadReporter,
}

impl tonic::server::NamedService for OpenRcaService {
    const NAME: &'static str = crate::orca::SERVICE;
}

impl tower::Service<http::Request<Body>> for OpenRcaService {
    type Response = http::Response<Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() != crate::orca::STREAM_CORE_METRICS {
            let status = Status::unimplemented(format!(
                "{}: only StreamCoreMetrics is served",
                request.uri().path()
            ));
            return Box::pin(async move { Ok(status.into_http()) });
        }
        let stream = StreamCoreMetrics {
            reporter: self.reporter.clone(),
        };
        Box::pin(async move {
            let codec = tonic_prost::ProstCodec::<OrcaLoadReport, OrcaLoadReportRequest>::default();
            let mut grpc = tonic::server::Grpc::new(codec)
                .max_decoding_message_size(crate::orca::MAX_REPORT_BYTES);
            Ok(grpc.server_streaming(stream, request).await)
        })
    }
}

struct StreamCoreMetrics {
    reporter: LoadReporter,
}

type ReportStream = Pin<Box<dyn futures::Stream<Item = Result<OrcaLoadReport, Status>> + Send>>;

impl tonic::server::ServerStreamingService<OrcaLoadReportRequest> for StreamCoreMetrics {
    type Response = OrcaLoadReport;
    type ResponseStream = ReportStream;
    type Future = BoxFuture<'static, Result<tonic::Response<ReportStream>, Status>>;

    fn call(&mut self, request: tonic::Request<OrcaLoadReportRequest>) -> Self::Future {
        let reporter = self.reporter.clone();
        Box::pin(async move {
            let asked = request
                .into_inner()
                .report_interval
                .map_or(Duration::ZERO, crate::orca::ProtoDuration::to_std);
            // Within bounds whatever the client asks: tokio's interval panics on 0 and
            // on a period that overflows its clock.
            let every = asked
                .max(*lock(&reporter.state.min_interval))
                .clamp(Duration::from_millis(1), MAX_REPORT_INTERVAL);
            let closed = reporter.state.closed.subscribe();
            let stream = futures::stream::unfold(
                (reporter, tokio::time::interval(every), closed),
                |(reporter, mut ticks, mut closed)| async move {
                    // The first tick is at once: a new stream always gets one report.
                    tokio::select! {
                        biased;
                        _ = ticks.tick() => {}
                        // Closed, or the reporter is gone: the stream ends.
                        _ = closed.wait_for(|&closed| closed) => return None,
                    }
                    let report = reporter.report();
                    Some((Ok(report), (reporter, ticks, closed)))
                },
            );
            Ok(tonic::Response::new(Box::pin(stream) as ReportStream))
        })
    }
}

impl LoadReporter {
    /// The out-of-band service, `xds.service.orca.v3.OpenRcaService`, for
    /// `Server::add_service`.
    pub fn service(&self) -> OpenRcaService {
        OpenRcaService {
            reporter: self.clone(),
        }
    }
}
