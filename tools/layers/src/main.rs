//! `cargo run -p layers`: the import graph of every crate of the workspace. Prints,
//! for lb-core, each top-level module with what it imports and what its docs allow;
//! then every circle of imports in any crate, and every import a module's docs do not
//! allow. Exits 1 if there is any, 0 if the house is in order.
//!
//! `cargo run -p layers -- --edges` also lists every import between two modules.

use std::{path::Path, process::ExitCode};

use layers::{Graph, display, workspace_members};

fn main() -> ExitCode {
    let all_edges = std::env::args().any(|a| a == "--edges");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let members = match workspace_members(&root) {
        Ok(members) => members,
        Err(err) => {
            eprintln!("layers: cannot read {}/Cargo.toml: {err}", root.display());
            return ExitCode::FAILURE;
        }
    };
    let mut problems = 0;
    for (name, dir) in members {
        let graph = match Graph::of_crate(&name, &dir.join("src")) {
            Ok(graph) => graph,
            Err(err) => {
                eprintln!("layers: cannot read {}: {err}", dir.display());
                return ExitCode::FAILURE;
            }
        };
        if name == "lb-core" {
            print_layers(&graph);
        }
        if all_edges {
            println!("== {name}: every import between modules");
            for edge in graph.edges.values() {
                println!(
                    "  {} -> {}  ({})",
                    display(&edge.from),
                    display(&edge.to),
                    edge.path
                );
            }
        }
        for cycle in graph.cycles() {
            problems += 1;
            print!("{name}: {cycle}");
        }
        if let Ok(Some(binary)) = Graph::of_binary(&name, &dir.join("src")) {
            for cycle in binary.cycles() {
                problems += 1;
                print!("{}: {cycle}", binary.name);
            }
        }
    }
    if problems == 0 {
        println!(
            "no circle of imports in the workspace; every lb-core import is one its docs allow"
        );
        ExitCode::SUCCESS
    } else {
        println!("{problems} problem(s)");
        ExitCode::FAILURE
    }
}

fn print_layers(graph: &Graph) {
    println!("== lb-core: what each top-level module imports (and what its docs allow)");
    let edges = graph.top_level_edges();
    for module in graph.top_level_modules() {
        let imports: Vec<&str> = edges
            .keys()
            .filter(|(from, to)| from == &module && to != "crate")
            .map(|(_, to)| to.as_str())
            .collect();
        let allowed = graph.allowed_imports(&module).map_or(
            "(no `May import:` paragraph)".to_string(),
            |a| {
                if a.is_empty() {
                    "nothing".to_string()
                } else {
                    a.join(", ")
                }
            },
        );
        println!(
            "  {module:<16} imports {:<40} allowed: {allowed}",
            if imports.is_empty() {
                "nothing".to_string()
            } else {
                imports.join(", ")
            }
        );
    }
    let (violations, _) = graph.layer_violations();
    for violation in violations {
        println!("  NOT ALLOWED: {violation}");
    }
    for cycle in graph.top_level_cycles() {
        print!("  between top-level modules: {cycle}");
    }
}
