//! The harness, for a fraction of a second per subject, so that it cannot rot: real
//! servers on 127.0.0.1:0, lb-proxy in process, the `lb-bench` binary end to end.
//! Figures are printed, never asserted: this machine is shared and noisy.

use std::time::Duration;

use lb_bench::{
    Client, Settings, chart, measure, pick_flatness,
    report::{Report, Row, Run, splice},
};
use lb_core::policy::PickFirstConfig;
use lb_core::{Balancer, Endpoint, Policy};

fn quick() -> Settings {
    Settings {
        concurrencies: vec![1, 16],
        duration: Duration::from_millis(200),
        // Long enough for balance_list's lazy first connection, even on a busy machine.
        warmup: Duration::from_millis(300),
        repeats: 1,
        runs: 1,
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
            "balancer/pick_first",
            Client::balancer(Policy::new(PickFirstConfig {}), &addrs)
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
    let runs = vec![Run {
        rows: rows.clone(),
        h2load: Vec::new(),
        picks: pick_flatness(2_000),
    }];
    let report = Report {
        date: "2026-01-01".into(),
        machine: lb_bench::machine(),
        layout: "unpinned (smoke test)".into(),
        settings,
        rows,
        runs,
        hetero: Vec::new(),
        scale: None,
        skipped: vec!["nginx: not in the smoke test".into()],
    };
    let markdown = report.to_markdown();
    assert!(markdown.contains("| balancer/pick_first |"), "{markdown}");
    assert!(markdown.contains("nginx: not in the smoke test"));
    assert!(markdown.contains("Layout: unpinned (smoke test)"));
    let verdicts = report.verdicts();
    assert_eq!(verdicts.len(), 12, "{verdicts:#?}");
    let goal = |i: usize| &verdicts[i].target.goal;
    assert!(goal(0).contains("concurrency 1,") && verdicts[0].holds().is_some());
    assert!(goal(1).contains("concurrency 16,") && verdicts[1].holds().is_some());
    assert!(
        verdicts[2].holds().is_none(),
        "concurrency 64 was not measured"
    );
    assert!(verdicts[5].holds().is_none(), "no nginx, no verdict");
    assert!(
        verdicts[8].target.goal.contains("1,000") && verdicts[8].holds().is_some(),
        "the pick costs are measured in process"
    );
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
        "--runs",
        "2",
        "--picks",
        "1000",
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
    assert_eq!(figures["runs"].as_array().map(Vec::len), Some(2));
    assert!(document.contains("| target | holds | runs |"), "{document}");

    // The saved figures are a baseline for the next run; a file that is not one is
    // refused, naming it, before anything is measured.
    let servers_list = list.clone();
    let compare = move |baseline: &std::path::Path| {
        let args: Vec<String> = [
            "--servers",
            &servers_list,
            "--concurrency",
            "1",
            "--duration",
            "50ms",
            "--warmup",
            "20ms",
            "--repeats",
            "1",
            "--policies",
            "round_robin,peak_ewma",
            "--picks",
            "1000",
            "--baseline",
            &baseline.display().to_string(),
        ]
        .map(String::from)
        .to_vec();
        std::process::Command::new(env!("CARGO_BIN_EXE_lb-bench"))
            .args(&args)
            .output()
            .expect("lb-bench runs")
    };
    let json_path = json.clone();
    let first = compare.clone();
    let output = tokio::task::spawn_blocking(move || first(&json_path))
        .await
        .expect("no panic");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("against the baseline of"), "{stderr}");
    let not_json = out.clone();
    let output = tokio::task::spawn_blocking(move || compare(&not_json))
        .await
        .expect("no panic");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("BENCHMARKS.md: not a report saved by lb-bench --json"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
    servers.shutdown().await.expect("clean shutdown");
    slow.shutdown().await.expect("clean shutdown");
}
