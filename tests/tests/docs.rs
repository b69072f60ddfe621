//! The policy tables of the tutorial's chapter on policies and docs/POLICIES.md list exactly the built-in
//! policies, in the registry's order: adding a policy without documenting it, or
//! renaming one in the code only, fails here.

use lb_core::policy::BUILT_IN;

/// The names in the first column of the first table in `text` after `heading` whose
/// header starts with `header` (the backticked word of each row).
fn table_names(text: &str, heading: &str, header: &str) -> Vec<String> {
    let after = text
        .find(heading)
        .unwrap_or_else(|| panic!("no `{heading}`"));
    let rows = text[after..]
        .lines()
        .skip_while(|line| !line.starts_with(header))
        .skip(2) // The header and the |---| line.
        .take_while(|line| line.starts_with('|'));
    rows.filter_map(|row| {
        let first = row.trim_start_matches('|').split('|').next()?.trim();
        Some(first.trim_matches('`').to_string())
    })
    .collect()
}

fn read(path: &str) -> String {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    std::fs::read_to_string(format!("{root}/{path}")).expect("the file is there")
}

fn built_in() -> Vec<String> {
    BUILT_IN.iter().map(|p| p.name().to_string()).collect()
}

#[test]
fn the_tutorial_lists_every_built_in_policy() {
    let chapter = read("docs/03-policies.md");
    assert_eq!(
        table_names(&chapter, "# 3. The policies", "| `--policy` |"),
        built_in()
    );
}

#[test]
fn docs_policies_lists_every_built_in_policy() {
    let policies = read("docs/POLICIES.md");
    assert_eq!(table_names(&policies, "# ", "| policy |"), built_in());
}
