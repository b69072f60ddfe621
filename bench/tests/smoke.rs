//! The harness, for a fraction of a second per subject, so that it cannot rot: real
//! servers on 127.0.0.1:0, lb-proxy in process, the `lb-bench` binary end to end.
//! Figures are printed, never asserted: this machine is shared and noisy.

use std::time::Duration;

use lb_bench::{
    Client, Settings, chart, measure,
    report::{Report, Row, splice},
};
use lb_core::policy::RoundRobinConfig;
use lb_core::{Balancer, Endpoint, Policy};

fn quick() -> Settings {
    Settings {
        concurrencies: vec![1, 4],
        duration: Duration::from_millis(200),
        // Long enough for balance_list's lazy first connection, even on a busy machine.
        warmup: Duration::from_millis(300),
        repeats: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subject_is_measured_and_the_report_and_chart_are_written() {
    let servers = greeter_server::spawn(greeter_server::Config::on_ports(&[0, 0, 0]))
        .await
        .expect("servers start");
    let addrs = servers.addrs();
    let endpoints: Vec<Endpoint> = addrs
        .iter()
        .map(|a| a.to_string().parse().expect("valid"))
        .collect();
    let proxied = Balancer::builder(endpoints)
        .seed(3)
        .build()
        .expect("builds");
    proxied.wait_settled(Duration::from_secs(5)).await;
    let proxy = lb_proxy::spawn("127.0.0.1:0".parse().expect("addr"), proxied)
        .await
        .expect("proxy starts");

    let subjects = vec![
        ("direct", Client::direct(addrs[0]).await.expect("connects")),
        (
            "balancer/round_robin",
            Client::balancer(Policy::new(RoundRobinConfig {}), &addrs)
                .await
                .expect("builds"),
        ),
        (
            "balance_list",
            Client::balance_list(&addrs).expect("builds"),
        ),
        (
            "lb-proxy",
            Client::direct(proxy.addr()).await.expect("connects"),
        ),
    ];
    let settings = quick();
    let mut rows = Vec::new();
    for &c in &settings.concurrencies {
        for (name, client) in &subjects {
            let m = measure(client, c, &settings).await;
            println!("{name} c={c}: {m:?}");
            assert!(m.calls_per_sec > 0.0, "{name} completed calls");
            assert_eq!(m.errors, 0, "{name} had no errors");
            assert!(m.p50_us <= m.p99_us && m.p99_us <= m.p999_us);
            rows.push(Row {
                subject: (*name).into(),
                concurrency: c,
                measurement: m,
            });
        }
    }
    let report = Report {
        date: "2026-01-01".into(),
        machine: lb_bench::machine(),
        settings,
        rows,
        hetero: Vec::new(),
        scale: None,
        skipped: vec!["nginx: not in the smoke test".into()],
    };
    let markdown = report.to_markdown();
    assert!(markdown.contains("| balancer/round_robin |"), "{markdown}");
    assert!(markdown.contains("nginx: not in the smoke test"));
    let targets = report.targets();
    assert_eq!(targets.len(), 6);
    assert!(
        targets[0].met.is_some(),
        "round robin vs direct is measured"
    );
    assert!(targets[2].met.is_none(), "no nginx, no verdict");
    let svg = chart::svg(&report);
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(
        svg.matches("<title>").count(),
        8,
        "4 subjects × 2 concurrencies"
    );
    assert!(splice("# Benchmarks\n", &markdown).contains("<!-- bench:end -->"));

    proxy.shutdown().await.expect("clean shutdown");
    servers.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_writes_the_report_chart_and_json() {
    let servers = greeter_server::spawn(greeter_server::Config::on_ports(&[0, 0, 0]))
        .await
        .expect("servers start");
    let slow = greeter_server::spawn(greeter_server::Config::on_ports(&[0, 0]))
        .await
        .expect("servers start");
    let list = servers.endpoints_list();
    let ports: Vec<u16> = slow.addrs().iter().map(|a| a.port()).collect();
    let dir = std::env::temp_dir().join(format!("lb-bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let out = dir.join("BENCHMARKS.md");
    std::fs::write(
        &out,
        "# Benchmarks\n\nkept\n<!-- bench:begin -->\nold\n<!-- bench:end -->\n",
    )
    .expect("written");
    let (svg, json) = (dir.join("bench.svg"), dir.join("bench.json"));
    let mut args: Vec<String> = [
        "--servers",
        &list,
        "--hetero",
        &list,
        "--concurrency",
        "2",
        "--duration",
        "100ms",
        "--warmup",
        "20ms",
        "--repeats",
        "1",
        "--policies",
        "round_robin,peak_ewma",
        "--skipped",
        "nginx: smoke test",
    ]
    .map(String::from)
    .to_vec();
    // Consecutive ports only: the scale run takes a range. Use one port if the two
    // the OS gave are not neighbours.
    let scale = if ports[1] == ports[0] + 1 {
        format!("127.0.0.1:{}-{}", ports[0], ports[1])
    } else {
        format!("127.0.0.1:{}-{}", ports[0], ports[0])
    };
    args.extend(["--scale".into(), scale]);
    for (flag, path) in [("--out", &out), ("--svg", &svg), ("--json", &json)] {
        args.extend([flag.into(), path.display().to_string()]);
    }
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_lb-bench"))
            .args(&args)
            .output()
            .expect("lb-bench runs")
    })
    .await
    .expect("no panic");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let document = std::fs::read_to_string(&out).expect("written");
    assert!(document.starts_with("# Benchmarks\n\nkept\n"), "{document}");
    assert!(!document.contains("\nold\n"), "the old block was replaced");
    assert!(document.contains("| balancer/peak_ewma |"), "{document}");
    assert!(document.contains("One slow server of three"), "{document}");
    assert!(document.contains("endpoints in one balancer"), "{document}");
    assert!(
        std::fs::read_to_string(&svg)
            .expect("written")
            .starts_with("<svg")
    );
    let figures: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("written")).expect("JSON");
    assert_eq!(figures["rows"].as_array().map(Vec::len), Some(4));
    let _ = std::fs::remove_dir_all(dir);
    servers.shutdown().await.expect("clean shutdown");
    slow.shutdown().await.expect("clean shutdown");
}
