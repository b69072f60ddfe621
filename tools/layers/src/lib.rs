//! `layers`: which module of a crate imports which, read from the sources.
//!
//! A crate reads well when its modules import in one direction: from the ground up,
//! each module using only what lies below it. This tool reads a crate's `.rs` files as
//! text (no compiler, no dependencies), finds every path a module names (`use
//! crate::policy::Picker;`, `super::pool::Pool`, `crate::clock::now_nanos()`), follows
//! re-exports to the module that defines the item (`crate::Balancer` is
//! `balancer::handle`'s), and builds the graph of modules. Then it can tell:
//!
//! - **circles**: modules that import each other, directly or round a loop
//!   ([`Graph::cycles`], Tarjan's strongly connected components);
//! - **layers**: for lb-core, whether each top-level module imports only the modules
//!   its documentation allows. Each one says so in a paragraph of its module docs,
//!   after the words `May import:`, naming the modules in backticks (or `nothing`).
//!
//! What it leaves out: unit tests (`#[cfg(test)]` items and modules, which may use
//! anything), comments and strings, and `pub use` re-exports themselves (a module that
//! re-exports an item is a signpost, not a user of it). Macros are not expanded; a
//! module declared by one is found as a file all the same.
//!
//! Worked example: `call/attempt.rs` says `use crate::subchannels::pool::Pool;` and
//! `crate::clock::now_nanos()`: two edges, `call::attempt → subchannels::pool` and
//! `call::attempt → clock`. If `subchannels/pool.rs` said `use crate::call::attempt::Route;`,
//! the two would form a circle, and [`Graph::cycles`] would list
//! `[call::attempt, subchannels::pool]` with the file and line of each import.
#![forbid(unsafe_code)]

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    path::{Path, PathBuf},
};

/// A module's path inside its crate: `["balancer", "pool"]`; the crate root is `[]`.
pub type ModPath = Vec<String>;

/// Writes a module path as Rust does (`balancer::pool`, or `crate` for the root).
pub fn display(path: &[String]) -> String {
    if path.is_empty() {
        "crate".to_string()
    } else {
        path.join("::")
    }
}

/// One import: the module that names something, the module that defines it, where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edge {
    /// The importing module (its file's module).
    pub from: ModPath,
    /// The module that defines what is imported.
    pub to: ModPath,
    /// Where the import is written.
    pub file: PathBuf,
    /// The line, from 1.
    pub line: usize,
    /// The path as written, made absolute (`crate::policy::Picker`).
    pub path: String,
}

/// The modules of one crate and the imports between them.
#[derive(Debug, Default)]
pub struct Graph {
    /// The crate's name (its directory's).
    pub name: String,
    /// Every module found: its file, and for the top-level ones their docs.
    pub modules: BTreeMap<ModPath, PathBuf>,
    /// One edge per pair of modules (the first import found), in order.
    pub edges: BTreeMap<(ModPath, ModPath), Edge>,
    docs: BTreeMap<ModPath, String>,
}

/// A circle of modules: each imports the next, the last the first.
#[derive(Debug)]
pub struct Cycle {
    /// Every module caught in circles with these (a strongly connected set).
    pub caught: Vec<ModPath>,
    /// The modules of one shortest circle among them, in its order.
    pub modules: Vec<ModPath>,
    /// One import per step of the circle.
    pub edges: Vec<Edge>,
}

impl fmt::Display for Cycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.modules.iter().map(|m| display(m)).collect();
        writeln!(f, "circle: {} -> {}", names.join(" -> "), names[0])?;
        if self.caught.len() > self.modules.len() {
            let caught: Vec<String> = self.caught.iter().map(|m| display(m)).collect();
            writeln!(
                f,
                "  ({} modules in circles together: {})",
                caught.len(),
                caught.join(", ")
            )?;
        }
        for edge in &self.edges {
            writeln!(
                f,
                "  {} -> {}: {} ({}:{})",
                display(&edge.from),
                display(&edge.to),
                edge.path,
                edge.file.display(),
                edge.line
            )?;
        }
        Ok(())
    }
}

/// An import that a top-level module's `May import:` paragraph does not allow.
#[derive(Debug)]
pub struct Violation {
    /// The top-level module, and the one it should not import.
    pub from: String,
    /// See `from`.
    pub to: String,
    /// What it allows.
    pub allowed: Vec<String>,
    /// One such import.
    pub edge: Edge,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` imports `{}` ({} at {}:{}), but its docs allow only: {}",
            self.from,
            self.to,
            self.edge.path,
            self.edge.file.display(),
            self.edge.line,
            if self.allowed.is_empty() {
                "nothing".to_string()
            } else {
                self.allowed.join(", ")
            }
        )
    }
}

impl Graph {
    /// Reads the crate whose sources are under `src` (its `lib.rs`, or else its
    /// `main.rs`, and every module below it).
    pub fn of_crate(name: &str, src: &Path) -> std::io::Result<Self> {
        let mut reader = Reader::default();
        let root = if src.join("lib.rs").exists() {
            // The modules a main.rs beside it declares are the binary's, not the
            // library's (see `of_binary`).
            if let Ok(main) = std::fs::read_to_string(src.join("main.rs")) {
                reader.binary_only = declared_modules(&main);
            }
            src.join("lib.rs")
        } else {
            src.join("main.rs")
        };
        reader.read_tree(Vec::new(), &root, src)?;
        Ok(reader.finish(name))
    }

    /// Reads the binary of a package that has a library too: its `main.rs` and the
    /// modules it declares. `None` if the package has no such binary.
    pub fn of_binary(name: &str, src: &Path) -> std::io::Result<Option<Self>> {
        if !(src.join("lib.rs").exists() && src.join("main.rs").exists()) {
            return Ok(None);
        }
        let mut reader = Reader::default();
        reader.read_tree(Vec::new(), &src.join("main.rs"), src)?;
        Ok(Some(reader.finish(&format!("{name} (binary)"))))
    }

    /// Every circle of modules (each strongly connected set of two or more), with one
    /// import per step.
    pub fn cycles(&self) -> Vec<Cycle> {
        let nodes: Vec<&ModPath> = self.modules.keys().collect();
        let index: BTreeMap<&ModPath, usize> =
            nodes.iter().enumerate().map(|(i, m)| (*m, i)).collect();
        let mut next: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
        for (from, to) in self.edges.keys() {
            if let (Some(&a), Some(&b)) = (index.get(from), index.get(to)) {
                next[a].push(b);
            }
        }
        strongly_connected(&next)
            .into_iter()
            .filter(|component| component.len() > 1)
            .map(|component| {
                let members: BTreeSet<usize> = component.iter().copied().collect();
                let circle = circle_through(&next, &members);
                let modules: Vec<ModPath> = circle.iter().map(|&i| nodes[i].clone()).collect();
                let edges = (0..modules.len())
                    .map(|k| {
                        let pair = (modules[k].clone(), modules[(k + 1) % modules.len()].clone());
                        self.edges[&pair].clone()
                    })
                    .collect();
                let caught = component.iter().map(|&i| nodes[i].clone()).collect();
                Cycle {
                    caught,
                    modules,
                    edges,
                }
            })
            .collect()
    }

    /// The imports between top-level modules (`balancer::pool → policy::registry`
    /// counts as `balancer → policy`), one example each.
    pub fn top_level_edges(&self) -> BTreeMap<(String, String), Edge> {
        let mut edges = BTreeMap::new();
        for edge in self.edges.values() {
            let (from, to) = (top(&edge.from), top(&edge.to));
            if from != to {
                edges.entry((from, to)).or_insert_with(|| edge.clone());
            }
        }
        edges
    }

    /// The same graph one level up: the circles between top-level modules.
    pub fn top_level_cycles(&self) -> Vec<Cycle> {
        let mut graph = Graph {
            name: self.name.clone(),
            ..Graph::default()
        };
        for ((from, to), edge) in self.top_level_edges() {
            let (from, to) = (vec![from], vec![to]);
            graph.modules.entry(from.clone()).or_default();
            graph.modules.entry(to.clone()).or_default();
            let mut edge = edge.clone();
            edge.from.clone_from(&from);
            edge.to.clone_from(&to);
            graph.edges.insert((from, to), edge);
        }
        graph.cycles()
    }

    /// The top-level modules (`balancer`, `policy`, ...), without the crate root.
    pub fn top_level_modules(&self) -> Vec<String> {
        self.modules
            .keys()
            .filter(|m| m.len() == 1)
            .map(|m| m[0].clone())
            .collect()
    }

    /// What a top-level module's docs say it may import: the backticked names after
    /// `May import:` in its docs' paragraph; `None` if it has no such paragraph.
    pub fn allowed_imports(&self, module: &str) -> Option<Vec<String>> {
        let doc = self.docs.get(&vec![module.to_string()])?;
        // A paragraph, its lines joined: the words may wrap anywhere.
        let paragraph = doc
            .split("\n\n")
            .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
            .find(|p| p.contains("May import:"))?;
        let (_, rule) = paragraph.split_once("May import:")?;
        Some(backticked(rule))
    }

    /// Every import of one top-level module by another that the importer's `May
    /// import:` paragraph does not name, and every top-level module without one.
    pub fn layer_violations(&self) -> (Vec<Violation>, Vec<String>) {
        let mut violations = Vec::new();
        let mut undocumented = Vec::new();
        let mut allowed: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for module in self.top_level_modules() {
            match self.allowed_imports(&module) {
                Some(names) => {
                    allowed.insert(module, names);
                }
                None => undocumented.push(module),
            }
        }
        for ((from, to), edge) in self.top_level_edges() {
            if from == "crate" || to == "crate" {
                continue; // The root only declares and re-exports.
            }
            let Some(names) = allowed.get(&from) else {
                continue;
            };
            if !names.contains(&to) {
                violations.push(Violation {
                    from,
                    to,
                    allowed: names.clone(),
                    edge,
                });
            }
        }
        (violations, undocumented)
    }
}

/// The top-level module a module is in (`crate` for the root).
fn top(module: &[String]) -> String {
    module
        .first()
        .cloned()
        .unwrap_or_else(|| "crate".to_string())
}

/// The words in backticks in `text`, as module names (`crate::` and anything after a
/// `::` or `(` dropped: "`policy` (pickers)" is `policy`).
fn backticked(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(|word| word.trim_start_matches("crate::").to_string())
        .filter(|word| !word.is_empty() && word.chars().all(|c| c.is_alphanumeric() || c == '_'))
        .collect()
}

/// Tarjan's algorithm: the strongly connected components of a graph given as
/// successor lists (iteratively, so a deep graph cannot overflow the stack).
fn strongly_connected(next: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let n = next.len();
    let mut index = vec![usize::MAX; n];
    let mut low = vec![0; n];
    let mut on_stack = vec![false; n];
    let mut stack = Vec::new();
    let mut components = Vec::new();
    let mut counter = 0;
    for start in 0..n {
        if index[start] != usize::MAX {
            continue;
        }
        // (node, position in its successor list)
        let mut work = vec![(start, 0)];
        index[start] = counter;
        low[start] = counter;
        counter += 1;
        stack.push(start);
        on_stack[start] = true;
        while let Some(&mut (v, ref mut i)) = work.last_mut() {
            if let Some(&w) = next[v].get(*i) {
                *i += 1;
                if index[w] == usize::MAX {
                    index[w] = counter;
                    low[w] = counter;
                    counter += 1;
                    stack.push(w);
                    on_stack[w] = true;
                    work.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            work.pop();
            if let Some(&(parent, _)) = work.last() {
                low[parent] = low[parent].min(low[v]);
            }
            if low[v] == index[v] {
                let mut component = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    component.push(w);
                    if w == v {
                        break;
                    }
                }
                component.sort_unstable();
                components.push(component);
            }
        }
    }
    components
}

/// A shortest circle inside one strongly connected set: from its first member, a
/// breadth-first search back to it.
fn circle_through(next: &[Vec<usize>], members: &BTreeSet<usize>) -> Vec<usize> {
    let Some(&start) = members.iter().next() else {
        return Vec::new();
    };
    let mut came_from: BTreeMap<usize, usize> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for &w in &next[v] {
            if !members.contains(&w) {
                continue;
            }
            if w == start {
                let mut circle = vec![v];
                let mut at = v;
                while at != start {
                    at = came_from[&at];
                    circle.push(at);
                }
                circle.reverse();
                return circle;
            }
            if let std::collections::btree_map::Entry::Vacant(e) = came_from.entry(w) {
                e.insert(v);
                queue.push_back(w);
            }
        }
    }
    members.iter().copied().collect()
}

// ----- Reading the sources -----

/// A path as written in one module, not yet resolved.
#[derive(Clone, Debug)]
struct Written {
    /// The module it is written in (an inline module's own path).
    scope: ModPath,
    segments: Vec<String>,
    file: PathBuf,
    line: usize,
}

#[derive(Debug, Default)]
struct Module {
    /// The module whose file this is (for an inline module, the file's).
    node: ModPath,
    file: PathBuf,
    children: BTreeSet<String>,
    /// `pub use` names: what they stand for, as written.
    reexports: BTreeMap<String, Written>,
    /// `pub use path::*`.
    globs: Vec<Written>,
    /// Names brought in by a private `use`, for paths that start with one.
    aliases: BTreeMap<String, Written>,
    /// Items defined here (for re-exports by glob).
    items: BTreeSet<String>,
    uses: Vec<Written>,
}

#[derive(Default)]
struct Reader {
    modules: BTreeMap<ModPath, Module>,
    docs: BTreeMap<ModPath, String>,
    /// Files beside lib.rs that belong to main.rs.
    binary_only: BTreeSet<String>,
}

impl Reader {
    /// Reads the module at `path` from `file`, then its children: those it declares
    /// (`mod x;`, with `#[path]`), and every other `.rs` file in its directory (a macro
    /// may declare modules), except those declared under `#[cfg(test)]`.
    fn read_tree(&mut self, path: ModPath, file: &Path, src: &Path) -> std::io::Result<()> {
        let raw = std::fs::read_to_string(file)?;
        if path.len() <= 1 {
            self.docs.insert(path.clone(), inner_docs(&raw));
        }
        let declared = self.read_file(&path, file, &raw);
        // Where its children live: beside a lib.rs, main.rs or mod.rs; else in a
        // directory named after it.
        let is_dir_owner = matches!(
            file.file_name().and_then(|n| n.to_str()),
            Some("lib.rs" | "main.rs" | "mod.rs")
        );
        let dir = if is_dir_owner {
            file.parent().map(Path::to_path_buf).unwrap_or_default()
        } else {
            file.with_extension("")
        };
        let mut children: BTreeMap<String, PathBuf> = BTreeMap::new();
        for child in &declared.modules {
            let at = match &child.path_attr {
                Some(p) => file.parent().unwrap_or(src).join(p),
                None if dir.join(format!("{}.rs", child.name)).exists() => {
                    dir.join(format!("{}.rs", child.name))
                }
                None => dir.join(&child.name).join("mod.rs"),
            };
            if at.exists() {
                // A module declared twice (under two `cfg`s) is read from both files.
                if let Some(first) = children.get(&child.name) {
                    if first != &at {
                        let mut child_path = path.clone();
                        child_path.push(child.name.clone());
                        self.read_extra(&child_path, &at)?;
                    }
                    continue;
                }
                children.insert(child.name.clone(), at);
            }
        }
        let is_crate_root = path.is_empty();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
            entries.sort_by_key(|e| e.path());
            for entry in entries {
                let p = entry.path();
                let name = if p.is_dir() && p.join("mod.rs").exists() {
                    p.file_name().and_then(|n| n.to_str()).map(String::from)
                } else if p.extension().is_some_and(|e| e == "rs") {
                    p.file_stem().and_then(|n| n.to_str()).map(String::from)
                } else {
                    None
                };
                let Some(name) = name else { continue };
                if ["lib", "main", "mod"].contains(&name.as_str())
                    || (is_crate_root && self.binary_only.contains(&name))
                    || declared.test_only.contains(&name)
                    || children.contains_key(&name)
                    || children.values().any(|c| c == &p)
                    || (is_crate_root && name == "bin")
                {
                    continue;
                }
                // A file beside main.rs belongs to the binary only if main.rs declares
                // it; beside lib.rs, to the library.
                if is_crate_root && file.ends_with("main.rs") {
                    continue;
                }
                let at = if p.is_dir() { p.join("mod.rs") } else { p };
                children.insert(name, at);
            }
        }
        for (name, at) in children {
            let mut child_path = path.clone();
            child_path.push(name.clone());
            if let Some(module) = self.modules.get_mut(&path) {
                module.children.insert(name);
            }
            self.read_tree(child_path, &at, src)?;
        }
        Ok(())
    }

    /// A second file for a module already read (`#[cfg] #[path = "x_off.rs"] mod x;`).
    fn read_extra(&mut self, path: &ModPath, file: &Path) -> std::io::Result<()> {
        let raw = std::fs::read_to_string(file)?;
        let _ = self.read_file(path, file, &raw);
        Ok(())
    }

    fn read_file(&mut self, path: &ModPath, file: &Path, raw: &str) -> Declared {
        let code = without_tests(&strip(raw));
        let tokens = tokenize(&code);
        let path_attrs = path_attributes(raw);
        let mut declared = Declared {
            test_only: test_only_modules(raw),
            ..Declared::default()
        };
        {
            let module = self.modules.entry(path.clone()).or_default();
            module.node.clone_from(path);
            if module.file.as_os_str().is_empty() {
                module.file = file.to_path_buf();
            }
        }
        // Inline modules: (path, brace depth inside it).
        let mut scopes: Vec<(ModPath, usize)> = vec![(path.clone(), 0)];
        let mut depth = 0usize;
        let mut i = 0;
        while i < tokens.len() {
            let scope = scopes.last().map(|s| s.0.clone()).unwrap_or_default();
            let scope_depth = scopes.last().map_or(0, |s| s.1);
            match &tokens[i].kind {
                Kind::Punct('{') => depth += 1,
                Kind::Punct('}') => {
                    depth = depth.saturating_sub(1);
                    if scopes.len() > 1 && depth < scope_depth {
                        scopes.pop();
                    }
                }
                Kind::Ident(word) if word == "mod" => {
                    if let Some(Kind::Ident(name)) = tokens.get(i + 1).map(|t| &t.kind) {
                        match tokens.get(i + 2).map(|t| &t.kind) {
                            Some(Kind::Punct(';')) if depth == scope_depth => {
                                if scopes.len() == 1 {
                                    declared.modules.push(Declaration {
                                        name: name.clone(),
                                        path_attr: path_attrs.get(name).cloned(),
                                    });
                                }
                                i += 3;
                                continue;
                            }
                            Some(Kind::Punct('{')) => {
                                let mut inner = scope.clone();
                                inner.push(name.clone());
                                let module = self.modules.entry(inner.clone()).or_default();
                                module.node.clone_from(path);
                                module.file = file.to_path_buf();
                                if let Some(parent) = self.modules.get_mut(&scope) {
                                    parent.children.insert(name.clone());
                                }
                                depth += 1;
                                scopes.push((inner, depth));
                                i += 3;
                                continue;
                            }
                            _ => {}
                        }
                    }
                }
                Kind::Ident(word) if word == "use" => {
                    // `impl Trait + use<'a>` (precise capturing) is not an import.
                    if matches!(tokens.get(i + 1).map(|t| &t.kind), Some(Kind::Punct('<'))) {
                        i += 1;
                        continue;
                    }
                    let public = is_public(&tokens, i);
                    let line = tokens[i].line;
                    let (trees, end) = parse_use_tree(&tokens, i + 1);
                    let module = self.modules.entry(scope.clone()).or_default();
                    for (segments, name) in trees {
                        let written = Written {
                            scope: scope.clone(),
                            segments,
                            file: file.to_path_buf(),
                            line,
                        };
                        match (public, name) {
                            (true, Some(name)) => {
                                module.reexports.insert(name, written);
                            }
                            (true, None) => module.globs.push(written),
                            (false, name) => {
                                if let Some(name) = name {
                                    module.aliases.insert(name, written.clone());
                                }
                                module.uses.push(written);
                            }
                        }
                    }
                    i = end;
                    continue;
                }
                Kind::Ident(word)
                    if depth == scope_depth
                        && matches!(
                            word.as_str(),
                            "fn" | "struct"
                                | "enum"
                                | "trait"
                                | "type"
                                | "const"
                                | "static"
                                | "union"
                        ) =>
                {
                    if let Some(Kind::Ident(name)) = tokens.get(i + 1).map(|t| &t.kind) {
                        let module = self.modules.entry(scope.clone()).or_default();
                        module.items.insert(name.clone());
                    }
                }
                Kind::Ident(word) => {
                    let after_sep =
                        i > 0 && matches!(tokens[i - 1].kind, Kind::PathSep | Kind::Punct('.'));
                    if !after_sep
                        && matches!(tokens.get(i + 1).map(|t| &t.kind), Some(Kind::PathSep))
                    {
                        let line = tokens[i].line;
                        let (segments, end) = parse_path(&tokens, i);
                        let _ = word;
                        let module = self.modules.entry(scope.clone()).or_default();
                        module.uses.push(Written {
                            scope: scope.clone(),
                            segments,
                            file: file.to_path_buf(),
                            line,
                        });
                        i = end;
                        continue;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        declared
    }

    /// Resolves every path and makes the graph.
    fn finish(self, name: &str) -> Graph {
        let mut graph = Graph {
            name: name.to_string(),
            docs: self.docs.clone(),
            ..Graph::default()
        };
        for (path, module) in &self.modules {
            if &module.node == path {
                graph.modules.insert(path.clone(), module.file.clone());
            }
        }
        for module in self.modules.values() {
            for written in &module.uses {
                let Some(absolute) = self.absolute(written) else {
                    continue; // Another crate's.
                };
                let Some(target) = self.resolve(absolute.clone()) else {
                    continue;
                };
                let from = module.node.clone();
                let to = self.modules[&target].node.clone();
                if from == to || is_ancestor(&to, &from) && self.only_declares(&to) {
                    continue;
                }
                graph
                    .edges
                    .entry((from.clone(), to.clone()))
                    .or_insert(Edge {
                        from,
                        to,
                        file: written.file.clone(),
                        line: written.line,
                        path: format!("crate::{}", absolute.join("::")),
                    });
            }
        }
        graph
    }

    /// Whether a module defines nothing of its own (it declares modules and re-exports
    /// them): naming something through it is naming what it re-exports.
    fn only_declares(&self, module: &ModPath) -> bool {
        self.modules.get(module).is_some_and(|m| m.items.is_empty())
    }

    /// The path made absolute (from the crate root), or `None` for another crate's.
    fn absolute(&self, written: &Written) -> Option<ModPath> {
        let mut segments = written.segments.iter().peekable();
        let mut base: ModPath = match segments.peek().map(|s| s.as_str()) {
            Some("crate") => {
                segments.next();
                Vec::new()
            }
            Some("self") => {
                segments.next();
                written.scope.clone()
            }
            Some("super") => {
                let mut base = written.scope.clone();
                while segments.peek().map(|s| s.as_str()) == Some("super") {
                    segments.next();
                    base.pop();
                }
                base
            }
            Some(first) => {
                let scope = self.modules.get(&written.scope)?;
                if scope.children.contains(first) {
                    written.scope.clone()
                } else if let Some(alias) = scope.aliases.get(first) {
                    if alias.segments == written.segments {
                        return None; // The import itself: `use std::x` is another crate's.
                    }
                    let mut base = self.absolute(alias)?;
                    segments.next();
                    base.extend(segments.cloned());
                    return Some(base);
                } else if let Some(alias) = scope.reexports.get(first) {
                    let mut base = self.absolute(alias)?;
                    segments.next();
                    base.extend(segments.cloned());
                    return Some(base);
                } else {
                    return None;
                }
            }
            None => return None,
        };
        base.extend(segments.cloned());
        Some(base)
    }

    /// The module that defines what `path` names, following re-exports.
    fn resolve(&self, mut path: ModPath) -> Option<ModPath> {
        for _ in 0..32 {
            let mut prefix = path.len();
            while prefix > 0 && !self.modules.contains_key(&path[..prefix]) {
                prefix -= 1;
            }
            let module_path = path[..prefix].to_vec();
            let module = self.modules.get(&module_path)?;
            let Some(name) = path.get(prefix) else {
                return Some(module_path);
            };
            if let Some(target) = module.reexports.get(name) {
                let mut next = self.absolute(target)?;
                next.extend(path[prefix + 1..].iter().cloned());
                if next == path {
                    return Some(module_path);
                }
                path = next;
                continue;
            }
            let through_glob = module.globs.iter().find_map(|glob| {
                let base = self.absolute(glob)?;
                let target = self.modules.get(&base)?;
                (target.items.contains(name)
                    || target.children.contains(name)
                    || target.reexports.contains_key(name))
                .then_some(base)
            });
            if let Some(mut base) = through_glob {
                base.extend(path[prefix..].iter().cloned());
                path = base;
                continue;
            }
            return Some(module_path);
        }
        None
    }
}

fn is_ancestor(ancestor: &[String], of: &[String]) -> bool {
    ancestor.len() < of.len() && of.starts_with(ancestor)
}

#[derive(Default)]
struct Declared {
    modules: Vec<Declaration>,
    test_only: BTreeSet<String>,
}

struct Declaration {
    name: String,
    path_attr: Option<String>,
}

/// Whether the `use` at `at` is a re-export: `pub use`, `pub(crate) use`, ...
fn is_public(tokens: &[Token], at: usize) -> bool {
    let mut i = at;
    if i >= 1 && matches!(tokens[i - 1].kind, Kind::Punct(')')) {
        // pub(crate), pub(super), pub(in path)
        while i > 0 && !matches!(tokens[i - 1].kind, Kind::Punct('(')) {
            i -= 1;
        }
        i = i.saturating_sub(1);
    }
    i >= 1 && matches!(&tokens[i - 1].kind, Kind::Ident(w) if w == "pub")
}

/// A path from `at`: `a::b::C`, up to the first token that is not a segment.
fn parse_path(tokens: &[Token], at: usize) -> (Vec<String>, usize) {
    let mut segments = Vec::new();
    let mut i = at;
    while let Some(Kind::Ident(word)) = tokens.get(i).map(|t| &t.kind) {
        segments.push(word.clone());
        i += 1;
        if matches!(tokens.get(i).map(|t| &t.kind), Some(Kind::PathSep))
            && matches!(tokens.get(i + 1).map(|t| &t.kind), Some(Kind::Ident(_)))
        {
            i += 1;
        } else {
            break;
        }
    }
    (segments, i)
}

/// One leaf of a use tree: its path, and the name it binds (`None` for a glob).
type Leaf = (Vec<String>, Option<String>);

/// A use tree from `at` to its `;`: each leaf as (segments, the name it binds, or
/// `None` for a glob), and where it ends.
fn parse_use_tree(tokens: &[Token], at: usize) -> (Vec<Leaf>, usize) {
    let mut out = Vec::new();
    let end = use_tree(tokens, at, &[], &mut out);
    let mut i = end;
    while i < tokens.len() && !matches!(tokens[i].kind, Kind::Punct(';')) {
        i += 1;
    }
    (out, i + 1)
}

fn use_tree(tokens: &[Token], mut i: usize, prefix: &[String], out: &mut Vec<Leaf>) -> usize {
    let mut segments = prefix.to_vec();
    if matches!(tokens.get(i).map(|t| &t.kind), Some(Kind::PathSep)) {
        i += 1; // `use ::std::x`
    }
    loop {
        match tokens.get(i).map(|t| &t.kind) {
            Some(Kind::Ident(word)) => {
                let word = word.clone();
                i += 1;
                if matches!(tokens.get(i).map(|t| &t.kind), Some(Kind::PathSep)) {
                    segments.push(word);
                    i += 1;
                    continue;
                }
                // A leaf: `x`, `x as y`, or `self` (the prefix itself).
                let mut name = if word == "self" {
                    segments.last().cloned().unwrap_or_default()
                } else {
                    segments.push(word.clone());
                    word
                };
                if matches!(tokens.get(i).map(|t| &t.kind), Some(Kind::Ident(w)) if w == "as") {
                    if let Some(Kind::Ident(alias)) = tokens.get(i + 1).map(|t| &t.kind) {
                        name = alias.clone();
                    }
                    i += 2;
                }
                out.push((segments, (name != "_").then_some(name)));
                return i;
            }
            Some(Kind::Punct('*')) => {
                out.push((segments, None));
                return i + 1;
            }
            Some(Kind::Punct('{')) => {
                i += 1;
                loop {
                    match tokens.get(i).map(|t| &t.kind) {
                        Some(Kind::Punct('}')) => return i + 1,
                        Some(Kind::Punct(',')) => i += 1,
                        None => return i,
                        Some(_) => {
                            let next = use_tree(tokens, i, &segments, out);
                            if next == i {
                                return i + 1;
                            }
                            i = next;
                        }
                    }
                }
            }
            _ => return i,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Ident(String),
    PathSep,
    Punct(char),
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    line: usize,
}

fn tokenize(code: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let chars: Vec<char> = code.chars().collect();
    let mut line = 1;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let mut word: String = chars[start..i].iter().collect();
            // A raw identifier, `r#type`.
            if word == "r" && chars.get(i) == Some(&'#') {
                let start = i + 1;
                i = start;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                word = chars[start..i].iter().collect();
            }
            tokens.push(Token {
                kind: Kind::Ident(word),
                line,
            });
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            tokens.push(Token {
                kind: Kind::PathSep,
                line,
            });
            i += 2;
        } else {
            tokens.push(Token {
                kind: Kind::Punct(c),
                line,
            });
            i += 1;
        }
    }
    tokens
}

/// The source with comments and the contents of string and character literals
/// blanked out (newlines kept, so that lines still count).
fn strip(raw: &str) -> String {
    let chars: Vec<char> = raw.chars().collect();
    let mut out = String::with_capacity(raw.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if (c == 'r' || (c == 'b' && next == Some('r')))
            && !chars
                .get(i.wrapping_sub(1))
                .is_some_and(|p| p.is_alphanumeric() || *p == '_')
            && raw_string_start(&chars, i).is_some()
        {
            let (hashes, open) = raw_string_start(&chars, i).unwrap_or((0, i));
            for &ch in &chars[i..=open] {
                out.push(ch);
            }
            i = open + 1;
            let closing: String = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            while i < chars.len() {
                if chars[i..].starts_with(&closing.chars().collect::<Vec<_>>()) {
                    out.push_str(&closing);
                    i += closing.len();
                    break;
                }
                out.push(blank(chars[i]));
                i += 1;
            }
        } else if c == '"' {
            out.push('"');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < chars.len() {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
            out.push('"');
            i += 1;
        } else if c == '\'' {
            // A character literal ('a', '\n', '\''), or a lifetime ('a, 'static).
            let is_char = next == Some('\\') || chars.get(i + 2) == Some(&'\'');
            if is_char {
                out.push('\'');
                i += 1;
                while i < chars.len() && chars[i] != '\'' {
                    if chars[i] == '\\' {
                        out.push(' ');
                        i += 1;
                    }
                    if i < chars.len() {
                        out.push(' ');
                        i += 1;
                    }
                }
                out.push('\'');
                i += 1;
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// At `r"`, `r#"`, `br"`...: the number of `#` and the index of the opening quote.
fn raw_string_start(chars: &[char], at: usize) -> Option<(usize, usize)> {
    let mut i = at;
    if chars.get(i) == Some(&'b') {
        i += 1;
    }
    if chars.get(i) != Some(&'r') {
        return None;
    }
    i += 1;
    let mut hashes = 0;
    while chars.get(i) == Some(&'#') {
        hashes += 1;
        i += 1;
    }
    (chars.get(i) == Some(&'"')).then_some((hashes, i))
}

/// The code without the items under `#[cfg(test)]` (a test module, a test helper):
/// each blanked from its attribute to its `;` or closing brace.
fn without_tests(code: &str) -> String {
    let mut chars: Vec<char> = code.chars().collect();
    let pattern: Vec<char> = "#[cfg(test)]".chars().collect();
    let mut i = 0;
    while i + pattern.len() <= chars.len() {
        if chars[i..i + pattern.len()] != pattern[..] {
            i += 1;
            continue;
        }
        let start = i;
        let mut j = i + pattern.len();
        let mut depth = 0i32;
        let mut opened_brace = false;
        while j < chars.len() {
            match chars[j] {
                '{' | '(' | '[' => {
                    if chars[j] == '{' && depth == 0 {
                        opened_brace = true;
                    }
                    depth += 1;
                }
                '}' | ')' | ']' => {
                    depth -= 1;
                    if depth == 0 && chars[j] == '}' && opened_brace {
                        j += 1;
                        break;
                    }
                }
                ';' if depth == 0 => {
                    j += 1;
                    break;
                }
                _ => {}
            }
            j += 1;
        }
        for c in &mut chars[start..j.min(code.len())] {
            if *c != '\n' {
                *c = ' ';
            }
        }
        i = j;
    }
    chars.into_iter().collect()
}

/// The modules a file declares under `#[cfg(test)]` (`#[cfg(test)] mod testing;`).
fn test_only_modules(raw: &str) -> BTreeSet<String> {
    let lines: Vec<&str> = raw.lines().map(str::trim).collect();
    let mut names = BTreeSet::new();
    for (i, line) in lines.iter().enumerate() {
        if *line != "#[cfg(test)]" {
            continue;
        }
        for next in lines.iter().skip(i + 1) {
            if next.starts_with("#[") {
                continue;
            }
            let declared = next
                .trim_start_matches("pub(crate) ")
                .trim_start_matches("pub ")
                .strip_prefix("mod ")
                .and_then(|rest| rest.strip_suffix(';'));
            if let Some(name) = declared {
                names.insert(name.trim().to_string());
            }
            break;
        }
    }
    names
}

/// The modules a file declares with `mod name;` (at any visibility, under any `cfg`).
fn declared_modules(raw: &str) -> BTreeSet<String> {
    raw.lines()
        .map(str::trim)
        .filter_map(|line| {
            line.trim_start_matches("pub(crate) ")
                .trim_start_matches("pub ")
                .strip_prefix("mod ")?
                .strip_suffix(';')
                .map(|name| name.trim().to_string())
        })
        .collect()
}

/// `#[path = "file.rs"]` before a `mod name;`: name → file.
fn path_attributes(raw: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut pending: Option<String> = None;
    for line in raw.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("#[path = \"") {
            pending = rest.split('"').next().map(String::from);
            continue;
        }
        if line.starts_with("#[") {
            continue;
        }
        if let Some(file) = pending.take() {
            let name = line
                .trim_start_matches("pub(crate) ")
                .trim_start_matches("pub ")
                .strip_prefix("mod ")
                .and_then(|rest| rest.strip_suffix(';'));
            if let Some(name) = name {
                out.insert(name.trim().to_string(), file);
            }
        }
    }
    out
}

/// A file's inner docs (`//!` lines), as text.
fn inner_docs(raw: &str) -> String {
    raw.lines()
        .map(str::trim_start)
        .take_while(|l| l.starts_with("//!") || l.is_empty() || l.starts_with("#!"))
        .filter_map(|l| l.strip_prefix("//!"))
        .map(|l| l.strip_prefix(' ').unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The workspace's member crates (directory and name), read from its Cargo.toml.
pub fn workspace_members(root: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let manifest = std::fs::read_to_string(root.join("Cargo.toml"))?;
    let members = manifest
        .split("members")
        .nth(1)
        .and_then(|rest| rest.split('[').nth(1))
        .and_then(|rest| rest.split(']').next())
        .unwrap_or_default();
    Ok(members
        .split(',')
        .map(|m| m.trim().trim_matches('"'))
        .filter(|m| !m.is_empty())
        .map(|m| {
            let dir = root.join(m);
            let name = std::fs::read_to_string(dir.join("Cargo.toml"))
                .ok()
                .and_then(|toml| {
                    toml.lines().find_map(|l| {
                        l.strip_prefix("name = \"")
                            .map(|n| n.trim_end_matches('"').to_string())
                    })
                })
                .unwrap_or_else(|| m.to_string());
            (name, dir)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(files: &[(&str, &str)]) -> Graph {
        let dir = std::env::temp_dir().join(format!(
            "layers-test-{}-{}",
            std::process::id(),
            files.len() * 31 + files.iter().map(|f| f.1.len()).sum::<usize>()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        for (path, text) in files {
            let path = dir.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let graph = Graph::of_crate("t", &dir).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        graph
    }

    fn edges(graph: &Graph) -> Vec<String> {
        graph
            .edges
            .keys()
            .map(|(a, b)| format!("{} -> {}", display(a), display(b)))
            .collect()
    }

    #[test]
    fn reexports_lead_to_the_defining_module_and_a_circle_is_found() {
        let g = graph(&[
            (
                "lib.rs",
                "//! x\npub mod a;\npub mod b;\npub use a::inner::Thing;\n",
            ),
            ("a/mod.rs", "pub mod inner;\n"),
            ("a/inner.rs", "use crate::b::helper;\npub struct Thing;\n"),
            (
                "b.rs",
                "// use crate::a::nothing;\n\"crate::a::no\";\npub fn helper() { let _ = crate::Thing; }\n",
            ),
        ]);
        assert_eq!(edges(&g), ["a::inner -> b", "b -> a::inner"]);
        let cycles = g.cycles();
        assert_eq!(cycles.len(), 1);
        assert_eq!(cycles[0].edges.len(), 2);
        assert!(cycles[0].to_string().contains("b.rs:3"), "{}", cycles[0]);
    }

    #[test]
    fn tests_comments_and_strings_import_nothing() {
        let g = graph(&[
            (
                "lib.rs",
                "pub mod a;\npub mod b;\n#[cfg(test)]\nmod testing;\n",
            ),
            (
                "a.rs",
                "pub fn f() {}\n#[cfg(test)]\nmod tests {\n    use crate::b::g;\n}\n",
            ),
            (
                "b.rs",
                "pub fn g() { let _ = 'x'; let _ = r#\"crate::a::f\"#; }\n/* crate::a::f */\n",
            ),
            ("testing.rs", "use crate::a::f;\n"),
        ]);
        assert!(g.edges.is_empty(), "{:?}", edges(&g));
        assert!(!g.modules.contains_key(&vec!["testing".to_string()]));
    }

    #[test]
    fn grouped_and_relative_imports_are_read() {
        let g = graph(&[
            ("lib.rs", "pub mod x;\npub mod y;\npub mod z;\n"),
            ("x/mod.rs", "mod one;\nmod two;\n"),
            (
                "x/one.rs",
                "use super::two::{self, T};\nuse crate::{y::{A, B as C}, z};\nfn f() { z::go(); }\n",
            ),
            ("x/two.rs", "pub struct T;\n"),
            ("y.rs", "pub struct A; pub struct B;\n"),
            ("z.rs", "pub fn go() {}\n"),
        ]);
        assert_eq!(
            edges(&g),
            ["x::one -> x::two", "x::one -> y", "x::one -> z"]
        );
        assert!(g.cycles().is_empty());
    }

    #[test]
    fn the_may_import_paragraph_is_the_rule() {
        let g = graph(&[
            ("lib.rs", "pub mod low;\npub mod high;\n"),
            (
                "low.rs",
                "//! The ground.\n//!\n//! May import: nothing.\npub fn f() { crate::high::g(); }\n",
            ),
            (
                "high.rs",
                "//! Above.\n//!\n//! May import: `low`.\npub fn g() { crate::low::f(); }\n",
            ),
        ]);
        assert_eq!(g.allowed_imports("high"), Some(vec!["low".to_string()]));
        let (violations, undocumented) = g.layer_violations();
        assert!(undocumented.is_empty());
        assert_eq!(violations.len(), 1);
        assert_eq!(
            (violations[0].from.as_str(), violations[0].to.as_str()),
            ("low", "high")
        );
    }
}
