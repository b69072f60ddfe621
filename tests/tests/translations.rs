//! The Chinese documents stay true to the English ones, and both to the binaries.
//!
//! For each pair (README.md and README.zh-CN.md, docs/POLICIES.md and
//! docs/zh/POLICIES.md, docs/ARCHITECTURE.md and docs/zh/ARCHITECTURE.md, and each
//! chapter of the tutorial, docs/NN-*.md and docs/zh/NN-*.md):
//!
//! - the same headings, at the same levels, in the same order (a heading that is only
//!   code, such as ``### `round_robin` ``, is the same text in both);
//! - the same code blocks, byte for byte: the same commands and the same real output;
//! - the same inline code (commands, flags, paths, names);
//! - every relative link reaches a file, and every `#anchor` a heading.
//!
//! And every `--flag` that a command in any of them gives to one of our programs is in
//! that program's `--help`. A change to the English README that is not carried over
//! to the Chinese one fails here.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use lb_playground::docs::slug;
use pulldown_cmark::{CodeBlockKind, Event, HeadingLevel, Parser, Tag, TagEnd};

/// The pairs: English, Chinese. The chapters of the tutorial are every `docs/NN-*.md`,
/// each with its twin in `docs/zh/` (see `chapters`).
const PAIRS: [(&str, &str); 3] = [
    ("README.md", "README.zh-CN.md"),
    ("docs/POLICIES.md", "docs/zh/POLICIES.md"),
    ("docs/ARCHITECTURE.md", "docs/zh/ARCHITECTURE.md"),
];

/// Every pair: the three above, and each chapter (`docs/01-server.md` and
/// `docs/zh/01-server.md`, ...).
fn pairs() -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = PAIRS
        .iter()
        .map(|(en, zh)| (en.to_string(), zh.to_string()))
        .collect();
    let mut chapters: Vec<String> = std::fs::read_dir(root().join("docs"))
        .expect("docs/")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| {
            name.ends_with(".md") && name.as_bytes().first().is_some_and(u8::is_ascii_digit)
        })
        .collect();
    chapters.sort();
    assert!(
        chapters.len() >= 10,
        "the tutorial's chapters: {chapters:?}"
    );
    for chapter in chapters {
        pairs.push((format!("docs/{chapter}"), format!("docs/zh/{chapter}")));
    }
    pairs
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// What a document is made of, for comparing.
#[derive(Default)]
struct Doc {
    /// (level, text, whether the heading is only a code span).
    headings: Vec<(HeadingLevel, String, bool)>,
    code_blocks: Vec<String>,
    inline_code: BTreeSet<String>,
    links: Vec<String>,
}

fn parse(text: &str) -> Doc {
    let mut doc = Doc::default();
    let mut heading: Option<(HeadingLevel, String, usize, usize)> = None;
    let mut block: Option<String> = None;
    let options = pulldown_cmark::Options::ENABLE_TABLES;
    for event in Parser::new_ext(text, options) {
        match event {
            Event::Start(Tag::Heading { level, .. }) => {
                heading = Some((level, String::new(), 0, 0))
            }
            Event::End(TagEnd::Heading(_)) => {
                if let Some((level, text, codes, others)) = heading.take() {
                    doc.headings.push((level, text, codes == 1 && others == 0));
                }
            }
            Event::Start(Tag::CodeBlock(kind)) => {
                let tag = match kind {
                    CodeBlockKind::Fenced(tag) => tag.to_string(),
                    CodeBlockKind::Indented => String::new(),
                };
                block = Some(format!("```{tag}\n"));
            }
            Event::End(TagEnd::CodeBlock) => doc.code_blocks.extend(block.take()),
            Event::Text(t) => {
                if let Some(block) = &mut block {
                    block.push_str(&t);
                } else if let Some((_, text, _, others)) = &mut heading {
                    text.push_str(&t);
                    if !t.trim().is_empty() {
                        *others += 1;
                    }
                }
            }
            Event::Code(c) => {
                if let Some((_, text, codes, _)) = &mut heading {
                    text.push('`');
                    text.push_str(&c);
                    text.push('`');
                    *codes += 1;
                }
                doc.inline_code.insert(c.to_string());
            }
            Event::Start(Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. }) => {
                doc.links.push(dest_url.to_string());
            }
            _ => {}
        }
    }
    doc
}

fn slugs(doc: &Doc) -> BTreeSet<String> {
    doc.headings
        .iter()
        .map(|(_, text, _)| slug(&text.replace('`', "")))
        .collect()
}

#[test]
fn the_chinese_documents_have_the_english_ones_structure_code_and_commands() {
    for (english, chinese) in pairs() {
        let (english, chinese) = (english.as_str(), chinese.as_str());
        let (en, zh) = (parse(&read(english)), parse(&read(chinese)));
        let levels = |d: &Doc| d.headings.iter().map(|h| h.0).collect::<Vec<_>>();
        assert_eq!(
            levels(&en),
            levels(&zh),
            "{chinese} must have {english}'s headings, at the same levels, in order:\n{:#?}\nagainst\n{:#?}",
            en.headings.iter().map(|h| &h.1).collect::<Vec<_>>(),
            zh.headings.iter().map(|h| &h.1).collect::<Vec<_>>()
        );
        for ((_, en_text, code_only), (_, zh_text, _)) in en.headings.iter().zip(&zh.headings) {
            if *code_only {
                assert_eq!(
                    en_text, zh_text,
                    "{chinese}: a code heading is not translated"
                );
            }
        }
        assert_eq!(
            en.code_blocks.len(),
            zh.code_blocks.len(),
            "{chinese} must have {english}'s code blocks"
        );
        for (i, (en_block, zh_block)) in en.code_blocks.iter().zip(&zh.code_blocks).enumerate() {
            assert_eq!(
                en_block,
                zh_block,
                "code block {} of {chinese} differs from {english}'s (carry the change over)",
                i + 1
            );
        }
        let missing: Vec<_> = en.inline_code.difference(&zh.inline_code).collect();
        assert!(
            missing.is_empty(),
            "{chinese} lacks inline code that {english} has: {missing:?}"
        );
        let extra: Vec<_> = zh.inline_code.difference(&en.inline_code).collect();
        assert!(
            extra.is_empty(),
            "{chinese} has inline code that {english} has not: {extra:?}"
        );
    }
}

#[test]
fn every_link_reaches_a_file_and_every_anchor_a_heading() {
    let docs: Vec<String> = pairs().into_iter().flat_map(|(en, zh)| [en, zh]).collect();
    for path in docs.iter().map(String::as_str) {
        let doc = parse(&read(path));
        let dir = Path::new(path).parent().unwrap_or(Path::new(""));
        for link in &doc.links {
            if link.starts_with("http://") || link.starts_with("https://") {
                continue;
            }
            let (file, anchor) = match link.split_once('#') {
                Some((file, anchor)) => (file, Some(anchor)),
                None => (link.as_str(), None),
            };
            let target = if file.is_empty() {
                PathBuf::from(path)
            } else {
                dir.join(file)
            };
            let full = root().join(&target);
            assert!(full.exists(), "{path}: the link {link} reaches nothing");
            if let Some(anchor) = anchor {
                let text = std::fs::read_to_string(&full)
                    .unwrap_or_else(|e| panic!("{path}: {link}: {e}"));
                assert!(
                    slugs(&parse(&text)).contains(anchor),
                    "{path}: the link {link} names no heading of {}",
                    target.display()
                );
            }
        }
    }
}

/// Our programs, by the name commands use, and their `--help` (every subcommand's).
fn help_texts() -> Vec<(&'static str, String)> {
    // Integration tests run from target/<profile>/deps; the binaries are one up.
    let exe = std::env::current_exe().expect("the test binary");
    let bin_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf();
    let help = |program: &str, args: &[&str]| -> String {
        let path = bin_dir.join(program);
        assert!(
            path.is_file(),
            "{} is missing: build the workspace first (cargo test --workspace does)",
            path.display()
        );
        let out = Command::new(&path)
            .args(args)
            .arg("--help")
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(out.status.success(), "{program} {args:?} --help");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let client: String = [
        &[][..],
        &["run"],
        &["compare"],
        &["simulate"],
        &["health"],
        &["playground"],
    ]
    .iter()
    .map(|sub| help("greeter-client", sub))
    .collect();
    vec![
        ("greeter-client", client),
        ("greeter-server", help("greeter-server", &[])),
        ("greeter-certs", help("greeter-certs", &[])),
        ("lb-proxy", help("lb-proxy", &[])),
    ]
}

/// The `--flags` given to `program` on the command lines of a code block, following
/// `\` continuations, up to a pipe, `&&`, `;`, a redirection or a comment.
fn flags_given(block: &str, program: &str) -> Vec<String> {
    let mut flags = Vec::new();
    let mut continuing = false;
    for line in block.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let start = if continuing {
            Some(0)
        } else {
            words
                .iter()
                .position(|w| w.rsplit('/').next() == Some(program))
                .map(|i| i + 1)
        };
        continuing = false;
        let Some(start) = start else { continue };
        for word in &words[start..] {
            if ["|", "&&", ";", "#", ">", "2>", "&"].contains(word) || word.starts_with('#') {
                break;
            }
            if let Some(flag) = word.strip_prefix("--")
                && !flag.is_empty()
            {
                let name = flag.split('=').next().unwrap_or(flag);
                flags.push(format!("--{name}"));
            }
        }
        continuing = line.trim_end().ends_with('\\');
    }
    flags
}

#[test]
fn every_flag_the_readmes_give_our_programs_is_in_their_help() {
    let helps = help_texts();
    for path in pairs().into_iter().flat_map(|(en, zh)| [en, zh]) {
        let path = path.as_str();
        let doc = parse(&read(path));
        for block in &doc.code_blocks {
            for (program, help) in &helps {
                for flag in flags_given(block, program) {
                    let known = help
                        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                        .any(|word| word == flag);
                    assert!(
                        known,
                        "{path}: `{program} {flag}` is not in `{program} --help`:\n{block}"
                    );
                }
            }
        }
    }
}

#[test]
fn flags_are_found_on_command_lines() {
    let block = "```sh\ntarget/release/greeter-client --servers a:1 \\\n  --policy x --json | jq . # --not\ngreeter-server --port=0\n";
    assert_eq!(
        flags_given(block, "greeter-client"),
        ["--servers", "--policy", "--json"]
    );
    assert_eq!(flags_given(block, "greeter-server"), ["--port"]);
}
