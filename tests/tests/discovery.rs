//! Discovery: the balancer follows a resolver's changes with no restart and no call
//! needed to notice them.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use greeter_proto::{HelloRequest, MyServiceClient};
use greeter_server::Config;
use lb_core::{Balancer, Endpoint, resolver::Target};
use tokio::time::Instant;

fn json(endpoints: &[&Endpoint]) -> String {
    let list: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "{{\n  \"endpoints\": [\n    {}\n  ]\n}}\n",
        list.join(",\n    ")
    )
}

/// Which server answered one call on `client`.
async fn served_by(client: &mut MyServiceClient<Balancer>) -> String {
    let response = client
        .say_hello(HelloRequest { name: "d".into() })
        .await
        .expect("a call succeeds");
    e2e_tests::served_by(&response).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_file_adds_and_removes_servers_and_a_broken_edit_changes_nothing() {
    let servers = greeter_server::spawn(Config::on_ports(&[0, 0, 0]))
        .await
        .expect("start");
    let endpoints: Vec<Endpoint> = servers
        .addrs()
        .iter()
        .map(|a| a.to_string().parse().expect("valid"))
        .collect();
    let dir = std::env::temp_dir().join(format!("lb-discovery-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("endpoints.json");
    std::fs::write(&path, json(&[&endpoints[0], &endpoints[1]])).expect("written");

    let target: Target = format!("file://{}", path.display()).parse().expect("valid");
    let resolution = target.resolve().await.expect("the file reads");
    let balancer = Balancer::following(resolution)
        .seed(21)
        .build()
        .expect("builds");
    balancer.wait_settled(Duration::from_secs(5)).await;
    let mut client = MyServiceClient::new(balancer.clone());
    for _ in 0..6 {
        assert_ne!(served_by(&mut client).await, endpoints[2].to_string());
    }

    // Add the third server to the file: it gets calls within 2 s, with no restart.
    let written = Instant::now();
    std::fs::write(&path, json(&[&endpoints[0], &endpoints[1], &endpoints[2]])).expect("written");
    loop {
        if served_by(&mut client).await == endpoints[2].to_string() {
            break;
        }
        assert!(
            written.elapsed() < Duration::from_secs(2),
            "not reached within 2 s"
        );
        tokio::task::yield_now().await;
    }

    // A broken edit is logged and ignored: all three stay.
    std::fs::write(
        &path,
        "{\n  \"endpoints\": [\n    \"127.0.0.1:1\",\n  ]\n}\n",
    )
    .expect("written");
    // Give the watcher (every 250 ms) a few looks at the broken file.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(balancer.endpoints().len(), 3, "the last good list stays");
    served_by(&mut client).await;

    // Remove the first: it gets no new calls.
    let mut changes = balancer.changes();
    std::fs::write(&path, json(&[&endpoints[1], &endpoints[2]])).expect("written");
    while balancer.endpoints().len() != 2 {
        tokio::time::timeout(Duration::from_secs(2), changes.changed())
            .await
            .expect("removed within 2 s")
            .expect("balancer alive");
    }
    for _ in 0..20 {
        assert_ne!(served_by(&mut client).await, endpoints[0].to_string());
    }
    servers.shutdown().await.expect("clean shutdown");
    let _ = std::fs::remove_dir_all(dir);
}

/// A tiny DNS server on loopback for tests: answers A queries for any name with the
/// addresses in `answer` (AAAA and everything else: no records).
async fn dns_server(
    answer: std::sync::Arc<std::sync::Mutex<Vec<std::net::Ipv4Addr>>>,
) -> std::net::SocketAddr {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = socket.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((len, from)) = socket.recv_from(&mut buf).await {
            let query = &buf[..len];
            // Header (12 bytes), then the question: labels up to a 0, type, class.
            let Some(end) = query[12..].iter().position(|&b| b == 0).map(|z| 12 + z + 5) else {
                continue;
            };
            if end > len {
                continue;
            }
            let qtype = u16::from_be_bytes([query[end - 4], query[end - 3]]);
            let addresses = if qtype == 1 {
                answer.lock().expect("not poisoned").clone()
            } else {
                Vec::new()
            };
            let mut reply = Vec::with_capacity(512);
            reply.extend_from_slice(&query[..2]); // the query's id
            reply.extend_from_slice(&[0x81, 0x80]); // a response, recursion available
            reply.extend_from_slice(&[0, 1]); // one question
            reply.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
            reply.extend_from_slice(&[0, 0, 0, 0]); // no authority, no additional
            reply.extend_from_slice(&query[12..end]);
            for ip in addresses {
                reply.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0, 1]); // the name, A, IN
                reply.extend_from_slice(&0u32.to_be_bytes()); // TTL 0: ask again
                reply.extend_from_slice(&[0, 4]);
                reply.extend_from_slice(&ip.octets());
            }
            let _ = socket.send_to(&reply, from).await;
        }
    });
    addr
}

const IPS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(127, 0, 0, 1),
    Ipv4Addr::new(127, 0, 0, 2),
    Ipv4Addr::new(127, 0, 0, 3),
];

/// Three servers on the same port of three loopback addresses, as pods behind a
/// headless Service would be.
async fn three_pods() -> (u16, Vec<greeter_server::Servers>) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut servers = Vec::new();
    for ip in IPS {
        let mut config = Config::on_ports(&[port]);
        config.host = IpAddr::V4(ip);
        servers.push(greeter_server::spawn(config).await.expect("start"));
    }
    (port, servers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_re_resolution_adds_and_removes_servers_without_a_restart() {
    let ips = IPS;
    let (port, servers) = three_pods().await;
    let answer = std::sync::Arc::new(std::sync::Mutex::new(vec![ips[0], ips[1]]));
    let dns = dns_server(answer.clone()).await;

    let target: Target = format!("dns://{dns}/greeter.test:{port}?refresh=200ms")
        .parse()
        .expect("valid");
    let resolution = target.resolve().await.expect("resolves");
    assert_eq!(resolution.endpoints().len(), 2);
    let balancer = Balancer::following(resolution)
        .seed(22)
        .build()
        .expect("builds");
    balancer.wait_settled(Duration::from_secs(5)).await;
    let mut client = MyServiceClient::new(balancer.clone());
    let third = format!("127.0.0.3:{port}");

    // The name now has a third address: calls reach it after re-resolution.
    answer.lock().expect("not poisoned").push(ips[2]);
    let changed = Instant::now();
    while served_by(&mut client).await != third {
        assert!(
            changed.elapsed() < Duration::from_secs(3),
            "not reached within 3 s"
        );
        tokio::task::yield_now().await;
    }

    // The first address leaves DNS: it gets no new calls.
    answer.lock().expect("not poisoned").remove(0);
    let mut changes = balancer.changes();
    while balancer.endpoints().len() != 2 {
        tokio::time::timeout(Duration::from_secs(3), changes.changed())
            .await
            .expect("removed within 3 s")
            .expect("balancer alive");
    }
    let first = format!("127.0.0.1:{port}");
    for _ in 0..20 {
        assert_ne!(served_by(&mut client).await, first);
    }
    for server in servers {
        server.shutdown().await.expect("clean shutdown");
    }
}

/// A pod dies and is replaced by one at another address. DNS is re-resolved only
/// every hour here, yet the client finds the replacement at once: the failure of an
/// endpoint makes the balancer ask the resolver to look again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_failure_re_resolves_dns_at_once() {
    let (port, mut servers) = three_pods().await;
    let answer = std::sync::Arc::new(std::sync::Mutex::new(vec![IPS[0], IPS[1]]));
    let dns = dns_server(answer.clone()).await;
    let target: Target = format!("dns:///greeter.test:{port}?refresh=1h")
        .parse::<Target>()
        .expect("valid")
        .with_dns_server(dns)
        .expect("a dns target");
    let balancer = Balancer::following(target.resolve().await.expect("resolves"))
        .seed(23)
        .build()
        .expect("builds");
    balancer.wait_settled(Duration::from_secs(5)).await;
    let mut client = MyServiceClient::new(balancer.clone());

    // The first pod goes; DNS now names its replacement, the third.
    *answer.lock().expect("not poisoned") = vec![IPS[1], IPS[2]];
    servers.remove(0).shutdown().await.expect("clean shutdown");
    let replaced = Instant::now();
    let third = format!("127.0.0.3:{port}");
    while served_by(&mut client).await != third {
        assert!(
            replaced.elapsed() < Duration::from_secs(5),
            "the replacement not found within 5 s (the refresh is 1 h)"
        );
        tokio::task::yield_now().await;
    }
    let listed: Vec<String> = balancer
        .endpoints()
        .iter()
        .map(|s| s.endpoint.to_string())
        .collect();
    assert_eq!(listed.len(), 2, "the dead pod left the list: {listed:?}");
    assert!(!listed.contains(&format!("127.0.0.1:{port}")));
    for server in servers {
        server.shutdown().await.expect("clean shutdown");
    }
}
