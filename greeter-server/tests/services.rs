//! What a generic gRPC tool sees: health and reflection on every instance.

use greeter_server::Config;
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

async fn channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("valid uri")
        .connect()
        .await
        .expect("connects")
}

#[tokio::test]
async fn every_instance_is_serving_for_the_whole_server_and_for_my_service() {
    let servers = greeter_server::spawn(Config::on_ports(&[0, 0]))
        .await
        .expect("starts");
    for addr in servers.addrs() {
        let mut health = HealthClient::new(channel(addr).await);
        for service in ["", greeter_proto::SERVICE_NAME] {
            let status = health
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .expect("answers")
                .into_inner()
                .status();
            assert_eq!(status, ServingStatus::Serving, "{addr} service {service:?}");
        }
    }
    servers.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn reflection_lists_my_service_like_grpcurl_would() {
    let servers = greeter_server::spawn(Config::on_ports(&[0]))
        .await
        .expect("starts");
    let mut reflection = ServerReflectionClient::new(channel(servers.addrs()[0]).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("answers")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("a response")
        .expect("not the end");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!(
            "expected a service list, got {:?}",
            response.message_response
        );
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"example.MyService".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
    servers.shutdown().await.expect("clean shutdown");
}
