//! greeter-server's load reports (ORCA, gRFC A51), read as a client reads them: per
//! call from the `endpoint-load-metrics-bin` trailer, and out of band from
//! `OpenRcaService/StreamCoreMetrics`, decoded with protoc's code for the xDS protos
//! (`greeter_proto::xds`), not lb-core's own declaration of them.

use std::time::Duration;

use greeter_proto::xds::data::orca::v3::OrcaLoadReport;
use greeter_proto::xds::service::orca::v3::{
    OrcaLoadReportRequest, open_rca_service_client::OpenRcaServiceClient,
};
use greeter_proto::{HelloRequest, MyServiceClient};
use greeter_server::{Config, spawn};
use prost::Message;
use tonic::transport::Channel;

async fn channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connects")
}

/// The report in a unary answer's trailer (tonic merges trailers into the metadata).
async fn trailer_report(client: &mut MyServiceClient<Channel>) -> Option<OrcaLoadReport> {
    let response = client
        .say_hello(HelloRequest { name: "a".into() })
        .await
        .expect("answered");
    let value = response
        .metadata()
        .get_bin("endpoint-load-metrics-bin")?
        .to_bytes()
        .expect("base64");
    Some(OrcaLoadReport::decode(value).expect("an OrcaLoadReport"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_small_server_reports_its_capacity_in_use_per_call_and_out_of_band() {
    let mut config = Config::on_ports(&[0]).with_latency(Duration::from_millis(20));
    config.capacity = Some(1);
    config.orca = true;
    let servers = spawn(config).await.expect("starts");
    let addr = servers.addrs()[0];
    let channel = channel(addr).await;

    // The out-of-band stream, asked for every 100 ms: the server grants 1 s at most.
    let mut oob = OpenRcaServiceClient::new(channel.clone())
        .stream_core_metrics(OrcaLoadReportRequest {
            report_interval: Some(prost_types::Duration {
                seconds: 0,
                nanos: 100_000_000,
            }),
            request_cost_names: Vec::new(),
        })
        .await
        .expect("the stream opens")
        .into_inner();
    let first = oob.message().await.expect("a report").expect("not ended");
    assert_eq!(first.named_metrics.get("capacity"), Some(&1.0), "{first:?}");

    // Four callers against a capacity of one: the one slot is always in use.
    let load: Vec<_> = (0..4)
        .map(|_| {
            let mut client = MyServiceClient::new(channel.clone());
            tokio::spawn(async move {
                for _ in 0..40 {
                    client
                        .say_hello(HelloRequest {
                            name: "load".into(),
                        })
                        .await
                        .expect("answered");
                }
            })
        })
        .collect();
    let started = tokio::time::Instant::now();
    let second = oob.message().await.expect("a report").expect("not ended");
    let third = oob.message().await.expect("a report").expect("not ended");
    // Asked for every 100 ms, they come at the server's minimum of 1 s: the third
    // report is 2 s after the first.
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "no more often than the server's minimum of 1 s"
    );
    for task in load {
        task.await.expect("no panic");
    }
    let busy = [&second, &third]
        .into_iter()
        .map(|r| r.application_utilization)
        .fold(0.0, f64::max);
    assert!(
        busy > 0.8,
        "the slot was always in use: {second:?} {third:?}"
    );
    assert!(third.rps_fractional > 10.0, "{third:?}");

    // Per call: a trailer on every answer, with the same kind of report.
    let mut client = MyServiceClient::new(channel);
    let report = trailer_report(&mut client).await.expect("a trailer");
    assert_eq!(
        report.named_metrics.get("capacity"),
        Some(&1.0),
        "{report:?}"
    );
    assert!(
        report.cpu_utilization >= 0.0 && report.eps == 0.0,
        "{report:?}"
    );
    // A graceful shutdown ends the open stream instead of waiting for it forever.
    servers.shutdown().await.expect("clean shutdown");
    while let Ok(Some(_)) = oob.message().await {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_orca_there_is_no_trailer_and_no_service() {
    let servers = spawn(Config::on_ports(&[0])).await.expect("starts");
    let channel = channel(servers.addrs()[0]).await;
    let mut client = MyServiceClient::new(channel.clone());
    assert!(trailer_report(&mut client).await.is_none());
    let status = OpenRcaServiceClient::new(channel)
        .stream_core_metrics(OrcaLoadReportRequest::default())
        .await
        .expect_err("not served");
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    servers.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_calls_are_reported_as_errors_per_second() {
    let mut config = Config::on_ports(&[0])
        .with_error_rate(1.0)
        .with_latency(Duration::from_millis(5));
    config.orca = true;
    let servers = spawn(config).await.expect("starts");
    let mut client = MyServiceClient::new(channel(servers.addrs()[0]).await);
    // Every answer fails, trailers-only: the report travels in its headers, which
    // tonic hands over as the status's metadata.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let report = loop {
        let status = client
            .say_hello(HelloRequest { name: "x".into() })
            .await
            .expect_err("fails");
        let bytes = status
            .metadata()
            .get_bin("endpoint-load-metrics-bin")
            .expect("a report in the trailers-only answer")
            .to_bytes()
            .expect("base64");
        let report = OrcaLoadReport::decode(bytes).expect("an OrcaLoadReport");
        if report.eps > 0.0 || tokio::time::Instant::now() > deadline {
            break report;
        }
    };
    assert!(report.eps > 0.0, "{report:?}");
    assert!(
        (report.eps - report.rps_fractional).abs() < 1e-6,
        "all failed: {report:?}"
    );
    servers.shutdown().await.expect("clean shutdown");
}
