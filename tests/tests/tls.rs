//! TLS and mutual TLS: real handshakes on loopback, with certificates made afresh by
//! `greeter_server::certs` (what `scripts/gen-certs.sh` writes for the demo).

use std::{collections::HashMap, path::PathBuf, time::Duration};

use greeter_proto::{HelloRequest, MyServiceClient};
use greeter_server::{Config, SERVED_BY, Servers, certs::DemoPki};
use lb_core::policy::RoundRobinConfig;
use lb_core::{Balancer, Endpoint, Policy, tls::ClientTls};
use tonic::Code;

/// The demo PKI, written to a directory of its own (the files are what the command
/// lines use; the library reads the same files).
struct Pki {
    dir: PathBuf,
    pki: DemoPki,
}

impl Pki {
    fn new(name: &str) -> Self {
        Self::from(name, DemoPki::generate().expect("certificates"))
    }

    fn from(name: &str, pki: DemoPki) -> Self {
        let dir = std::env::temp_dir().join(format!("lb-tls-{name}-{}", std::process::id()));
        pki.write_to(&dir).expect("written");
        Self { dir, pki }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Server settings; with `mutual`, client certificates signed by this CA required.
    fn server(&self, mutual: bool) -> lb_core::tls::ServerTls {
        let ca = self.file("ca.pem");
        lb_core::tls::server_config(
            &self.file("server.pem"),
            &self.file("server.key"),
            mutual.then_some(ca.as_path()),
        )
        .expect("server TLS")
    }

    /// Client settings trusting this CA; with `identity`, showing the client certificate.
    fn client(&self, identity: bool) -> ClientTls {
        let (cert, key) = (self.file("client.pem"), self.file("client.key"));
        ClientTls::from_files(
            &self.file("ca.pem"),
            identity.then_some((cert.as_path(), key.as_path())),
        )
        .expect("client TLS")
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn tls_fleet(pki: &Pki, n: usize, mutual: bool) -> (Servers, Vec<Endpoint>) {
    let servers = greeter_server::spawn(Config::on_ports(&vec![0; n]).with_tls(pki.server(mutual)))
        .await
        .expect("servers start");
    let endpoints = lb_core::parse_endpoint_list(&servers.endpoints_list()).expect("valid");
    (servers, endpoints)
}

fn balancer(endpoints: &[Endpoint], tls: Option<ClientTls>, seed: u64) -> Balancer {
    let mut builder = Balancer::builder(endpoints.to_vec())
        .policy(Policy::new(RoundRobinConfig::default()))
        .seed(seed);
    if let Some(tls) = tls {
        builder = builder.tls(tls);
    }
    builder.build().expect("builds")
}

/// Waits for the connections (handshakes included) and checks every one is READY.
async fn all_ready(balancer: &Balancer) {
    let statuses = balancer.wait_settled(Duration::from_secs(10)).await;
    assert!(
        statuses
            .iter()
            .all(|s| s.connectivity == lb_core::Connectivity::Ready),
        "{statuses:?}"
    );
}

async fn say_hello(balancer: &Balancer) -> Result<tonic::Response<String>, tonic::Status> {
    let response = MyServiceClient::new(balancer.clone())
        .say_hello(HelloRequest { name: "tls".into() })
        .await?;
    let (metadata, message, extensions) = response.into_parts();
    Ok(tonic::Response::from_parts(
        metadata,
        message.message,
        extensions,
    ))
}

/// Calls per server, by each server's own `x-served-by`.
async fn spread(balancer: &Balancer, calls: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..calls {
        let response = say_hello(balancer).await.expect("answered over TLS");
        assert_eq!(response.get_ref(), "Hello, tls!");
        let server = response
            .metadata()
            .get(SERVED_BY)
            .and_then(|v| v.to_str().ok())
            .expect("x-served-by")
            .to_string();
        *counts.entry(server).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_a_client_without_a_certificate_and_balances_with_one() {
    let pki = Pki::new("mtls");
    let (servers, endpoints) = tls_fleet(&pki, 3, true).await;

    // With the client certificate: round robin over TLS, exactly 30/30/30.
    let with = balancer(&endpoints, Some(pki.client(true)), 1);
    all_ready(&with).await;
    let counts = spread(&with, 90).await;
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|&n| n == 30), "{counts:?}");

    // Without one: the server ends the handshake, no call is ever answered, and the
    // error names the endpoint and the reason.
    let without = balancer(&endpoints[..1], Some(pki.client(false)), 2);
    without.wait_settled(Duration::from_secs(10)).await;
    let status = say_hello(&without).await.expect_err("refused");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status
            .message()
            .contains(&format!("endpoint {}", endpoints[0])),
        "{status:?}"
    );
    // And it says why, every time: the server's alert is read even when the client
    // was still writing its first bytes as the server closed the connection (it used
    // to be "broken pipe" or "connection closed" in 3 runs of 5).
    for run in 0..10 {
        let without = balancer(&endpoints[..1], Some(pki.client(false)), 100 + run);
        without.wait_settled(Duration::from_secs(10)).await;
        let status = say_hello(&without).await.expect_err("refused");
        assert!(
            status.message().contains("certificate required")
                && status.message().contains("--tls-cert"),
            "run {run}: {status:?}"
        );
    }

    // A certificate from another CA is refused too, and so is plaintext.
    let stranger = Pki::new("stranger");
    let foreign = ClientTls::from_pem(
        pki.pki.ca_pem.as_bytes(),
        Some((
            stranger.pki.client_cert_pem.as_bytes(),
            stranger.pki.client_key_pem.as_bytes(),
        )),
    )
    .expect("valid PEM");
    let foreign = balancer(&endpoints[..1], Some(foreign), 3);
    foreign.wait_settled(Duration::from_secs(10)).await;
    let status = say_hello(&foreign).await.expect_err("refused");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("unknown CA"), "{status:?}");
    let refused = servers.connections(0).expect("instance 0");
    assert!(
        refused
            .handshakes_failed
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 11,
        "the server counted the refused handshakes"
    );
    let plaintext = balancer(&endpoints[..1], None, 4);
    plaintext.wait_settled(Duration::from_secs(10)).await;
    assert!(say_hello(&plaintext).await.is_err());

    // None of that hurt the servers: the good client still gets every call answered.
    let counts = spread(&with, 3).await;
    assert_eq!(counts.values().sum::<usize>(), 3);
    servers.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_client_certificate_is_refused_as_expired() {
    let expired = DemoPki::generate_with_expired_client().expect("certificates");
    let pki = Pki::from("expired", expired);
    let (servers, endpoints) = tls_fleet(&pki, 1, true).await;
    let client = balancer(&endpoints, Some(pki.client(true)), 14);
    client.wait_settled(Duration::from_secs(10)).await;
    let status = say_hello(&client).await.expect_err("refused");
    assert!(
        status.message().contains("certificate expired"),
        "{status:?}"
    );
    servers.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_checks_the_servers_certificate() {
    let pki = Pki::new("verify");
    let (servers, endpoints) = tls_fleet(&pki, 1, false).await;

    // Server-side TLS only: a client that trusts the CA needs no certificate.
    let trusting = balancer(&endpoints, Some(pki.client(false)), 5);
    all_ready(&trusting).await;
    assert_eq!(
        say_hello(&trusting).await.expect("answered").get_ref(),
        "Hello, tls!"
    );

    // The certificate names localhost, 127.0.0.1 and ::1: dialling by name works too.
    let by_name: Endpoint = format!("localhost:{}", endpoints[0].port())
        .parse()
        .expect("valid");
    let named = balancer(&[by_name], Some(pki.client(false)), 6);
    all_ready(&named).await;
    say_hello(&named)
        .await
        .expect("localhost is in the certificate");

    // A client that trusts another CA refuses this server: UnknownIssuer.
    let stranger = Pki::new("other-ca");
    let distrusting = balancer(&endpoints, Some(stranger.client(false)), 7);
    distrusting.wait_settled(Duration::from_secs(10)).await;
    let status = say_hello(&distrusting).await.expect_err("refused");
    assert!(status.message().contains("unknown CA"), "{status:?}");

    // Expecting a name the certificate does not carry fails verification as well.
    let wrong_name = balancer(
        &endpoints,
        Some(
            pki.client(false)
                .server_name("example.com")
                .expect("a name"),
        ),
        8,
    );
    wrong_name.wait_settled(Duration::from_secs(10)).await;
    let status = say_hello(&wrong_name).await.expect_err("refused");
    assert!(
        status.message().contains("not valid for the name"),
        "{status:?}"
    );
    servers.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lb_proxy_speaks_tls_on_both_sides() {
    let pki = Pki::new("proxy");
    let (servers, endpoints) = tls_fleet(&pki, 3, true).await;
    // The proxy shows its client certificate to the mTLS backends ...
    let behind = balancer(&endpoints, Some(pki.client(true)), 9);
    all_ready(&behind).await;
    // ... and requires one from its own callers.
    let options = lb_proxy::Options {
        tls: Some(pki.server(true)),
        ..Default::default()
    };
    let proxy = lb_proxy::spawn_with("127.0.0.1:0".parse().expect("addr"), behind, options)
        .await
        .expect("proxy starts");
    let front: Endpoint = proxy.addr().to_string().parse().expect("valid");

    let caller = balancer(std::slice::from_ref(&front), Some(pki.client(true)), 10);
    all_ready(&caller).await;
    let counts = spread(&caller, 30).await;
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|&n| n == 10), "{counts:?}");

    let uncertified = balancer(std::slice::from_ref(&front), Some(pki.client(false)), 11);
    uncertified.wait_settled(Duration::from_secs(10)).await;
    let status = say_hello(&uncertified).await.expect_err("refused");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains(&format!("endpoint {front}")),
        "{status:?}"
    );
    assert_eq!(spread(&caller, 3).await.values().sum::<usize>(), 3);

    proxy.shutdown().await.expect("proxy stops");
    servers.shutdown().await.expect("clean shutdown");
}

#[test]
fn unusable_files_are_named() {
    let pki = Pki::new("files");
    let missing = pki.file("missing.pem");
    let err = ClientTls::from_files(&missing, None).expect_err("no such file");
    assert!(err.to_string().contains("missing.pem"), "{err}");

    // A key where a certificate belongs, and a certificate where a key belongs.
    let err = ClientTls::from_files(&pki.file("client.key"), None).expect_err("not a cert");
    assert!(err.to_string().contains("client.key"), "{err}");
    assert!(err.to_string().contains("no PEM certificate"), "{err}");
    let err = lb_core::tls::server_config(&pki.file("server.pem"), &pki.file("server.pem"), None)
        .expect_err("not a key");
    assert!(
        err.to_string().contains("server.pem: a private key"),
        "{err}"
    );
}

#[test]
fn mismatched_keys_unusable_cas_and_bad_names_are_refused_at_load() {
    let pki = Pki::new("mismatch");
    // The client's key with the server's certificate: both files named.
    let err = lb_core::tls::server_config(&pki.file("server.pem"), &pki.file("client.key"), None)
        .expect_err("the key is not the certificate's");
    let text = err.to_string();
    assert!(text.contains("server.pem and "), "{text}");
    assert!(text.contains("client.key"), "{text}");
    assert!(
        text.contains("does not belong to the certificate"),
        "{text}"
    );

    // A PEM block labelled CERTIFICATE that holds no certificate.
    let bogus = pki.file("bogus.pem");
    std::fs::write(
        &bogus,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .expect("written");
    let err = ClientTls::from_files(&bogus, None).expect_err("not a certificate");
    assert!(err.to_string().contains("bogus.pem"), "{err}");

    // Names a certificate cannot carry.
    for bad in ["bad name", "[::1]", ""] {
        assert!(pki.client(false).server_name(bad).is_err(), "{bad:?}");
    }
    for good in ["localhost", "::1", "127.0.0.1", "greeter.default.svc"] {
        assert!(pki.client(false).server_name(good).is_ok(), "{good:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_the_handshake_is_a_failed_attempt_not_a_hang() {
    let pki = Pki::new("silent");
    // Accepts connections and never says a word.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let endpoint: Endpoint = silent
        .local_addr()
        .expect("addr")
        .to_string()
        .parse()
        .expect("valid");
    let keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let balancer = Balancer::builder([endpoint.clone()])
        .tls(pki.client(false))
        .connect_timeout(Duration::from_millis(300))
        .seed(12)
        .build()
        .expect("builds");
    let statuses = balancer.wait_settled(Duration::from_secs(10)).await;
    assert_eq!(
        statuses[0].connectivity,
        lb_core::Connectivity::TransientFailure,
        "{statuses:?}"
    );
    let reason = statuses[0].last_error.clone().unwrap_or_default();
    assert!(
        reason.contains("no connection within") || reason.contains("handshake"),
        "{reason}"
    );
    keep.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_over_ipv6_checks_the_address_in_the_certificate() {
    let pki = Pki::new("ipv6");
    let mut config = Config::on_ports(&[0]).with_tls(pki.server(true));
    config.host = "::1".parse().expect("an address");
    let Ok(servers) = greeter_server::spawn(config).await else {
        eprintln!("SKIPPED: no IPv6 loopback here");
        return;
    };
    let endpoint: Endpoint = servers.addrs()[0].to_string().parse().expect("valid");
    assert!(endpoint.to_string().starts_with("[::1]:"), "{endpoint}");
    let balancer = balancer(&[endpoint], Some(pki.client(true)), 13);
    all_ready(&balancer).await;
    assert_eq!(
        say_hello(&balancer).await.expect("answered").get_ref(),
        "Hello, tls!"
    );
    servers.shutdown().await.expect("clean shutdown");
}
