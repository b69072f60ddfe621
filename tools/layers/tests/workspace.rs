//! The house rules, checked on every `cargo test`: no crate of the workspace has a
//! circle of imports, and every top-level module of lb-core imports only what its
//! `May import:` paragraph allows. `cargo run -p layers` prints the whole picture.

use std::path::Path;

use layers::{Graph, workspace_members};

fn root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn no_crate_of_the_workspace_has_a_circle_of_imports() {
    let mut report = String::new();
    let members = workspace_members(&root()).expect("the workspace manifest");
    assert!(members.len() >= 8, "{members:?}");
    for (name, dir) in members {
        let graph = Graph::of_crate(&name, &dir.join("src")).expect("readable sources");
        assert!(
            graph.modules.len() > 1
                || name == "greeter-proto"
                || name == "layers"
                || !graph.modules.is_empty()
        );
        for cycle in graph.cycles() {
            report.push_str(&format!("{name}: {cycle}"));
        }
        if let Some(binary) = Graph::of_binary(&name, &dir.join("src")).expect("readable sources") {
            for cycle in binary.cycles() {
                report.push_str(&format!("{}: {cycle}", binary.name));
            }
        }
    }
    assert!(report.is_empty(), "circles of imports:\n{report}");
}

#[test]
fn lb_core_imports_run_one_way_as_each_module_says() {
    let graph = Graph::of_crate("lb-core", &root().join("lb-core/src")).expect("lb-core's sources");
    let (violations, undocumented) = graph.layer_violations();
    assert!(
        undocumented.is_empty(),
        "top-level modules of lb-core without a `May import:` paragraph in their docs: {undocumented:?}"
    );
    let violations: Vec<String> = violations.iter().map(ToString::to_string).collect();
    assert!(violations.is_empty(), "{}", violations.join("\n"));
    let cycles: Vec<String> = graph
        .top_level_cycles()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(cycles.is_empty(), "{}", cycles.join("\n"));
}
