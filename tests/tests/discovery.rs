//! Discovery: the balancer follows a resolver's changes with no restart and no call
//! needed to notice them.

use std::time::Duration;

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

async fn served_by(client: &mut MyServiceClient<Balancer>) -> String {
    let response = client
        .say_hello(HelloRequest { name: "d".into() })
        .await
        .expect("a call succeeds");
    let value = response.metadata().get("x-served-by").cloned();
    value
        .and_then(|v| v.to_str().ok().map(String::from))
        .unwrap_or_default()
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
    let updates = target.resolve().expect("the file reads");
    let balancer = Balancer::builder(updates.borrow().clone())
        .seed(21)
        .build()
        .expect("builds");
    balancer.follow(updates);
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
