//! docs/POLICIES.md, built into the binary: served as a page, with GitHub's anchors,
//! so that the playground can link each policy to its section.

use std::sync::OnceLock;

const POLICIES_MD: &str = include_str!("../../docs/POLICIES.md");

/// Where the files POLICIES.md links to are.
const REPOSITORY: &str = env!("CARGO_PKG_REPOSITORY");

/// The path of `policy`'s section of docs/POLICIES.md (a heading such as
/// ``### `round_robin` ``), if it has one.
pub fn policy_doc(policy: &str) -> Option<String> {
    static SLUGS: OnceLock<Vec<String>> = OnceLock::new();
    let slugs = SLUGS.get_or_init(|| {
        POLICIES_MD
            .lines()
            .filter(|l| l.starts_with('#'))
            .map(|l| slug(l.trim_start_matches('#')))
            .collect()
    });
    slugs
        .iter()
        .any(|s| s == policy)
        .then(|| format!("/docs/POLICIES.md#{policy}"))
}

/// A heading's anchor, as GitHub makes it: lower case, punctuation dropped but `-`
/// and `_`, spaces as `-` (CJK characters are letters, and stay). The docs test of
/// the Chinese translations checks links with it too.
pub fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// docs/POLICIES.md as a page, headings with GitHub's anchors.
pub fn policies_html() -> &'static str {
    static HTML: OnceLock<String> = OnceLock::new();
    HTML.get_or_init(|| {
        use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};
        let mut events = Vec::new();
        let mut heading: Option<(pulldown_cmark::HeadingLevel, Vec<Event<'_>>, String)> = None;
        for event in Parser::new_ext(POLICIES_MD, Options::ENABLE_TABLES) {
            match (&mut heading, event) {
                (None, Event::Start(Tag::Heading { level, .. })) => {
                    heading = Some((level, Vec::new(), String::new()));
                }
                (Some((level, inner, text)), Event::End(TagEnd::Heading(_))) => {
                    let id = slug(text);
                    let mut html = String::new();
                    pulldown_cmark::html::push_html(&mut html, inner.drain(..));
                    events.push(Event::Html(
                        format!("<{level} id=\"{id}\">{html}</{level}>\n").into(),
                    ));
                    heading = None;
                }
                (Some((_, inner, text)), event) => {
                    if let Event::Text(t) | Event::Code(t) = &event {
                        text.push_str(t);
                    }
                    inner.push(event);
                }
                // Links into the repository (`../lb-core/...`) are not served here.
                (
                    None,
                    Event::Start(Tag::Link {
                        link_type,
                        dest_url,
                        title,
                        id,
                    }),
                ) if dest_url.starts_with("../") => {
                    let url = format!("{REPOSITORY}/blob/main/{}", &dest_url[3..]);
                    events.push(Event::Start(Tag::Link {
                        link_type,
                        dest_url: url.into(),
                        title,
                        id,
                    }));
                }
                (None, event) => events.push(event),
            }
        }
        let mut body = String::new();
        pulldown_cmark::html::push_html(&mut body, events.into_iter());
        format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <title>Which policy when</title><link rel=\"stylesheet\" href=\"/style.css\">\
             </head><body class=\"doc\"><p><a href=\"/\">← back to the playground</a></p>\
             {body}</body></html>"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_core::Policy;

    #[test]
    fn slugs_are_githubs() {
        assert_eq!(slug(" `round_robin`"), "round_robin");
        assert_eq!(
            slug(" When two random choices are not enough"),
            "when-two-random-choices-are-not-enough"
        );
        assert_eq!(slug(" Hashing: ring or Maglev?"), "hashing-ring-or-maglev");
    }

    #[test]
    fn every_built_in_policy_has_a_section_to_link_to() {
        for name in Policy::names() {
            assert_eq!(
                policy_doc(name),
                Some(format!("/docs/POLICIES.md#{name}")),
                "docs/POLICIES.md needs a heading ### `{name}`"
            );
            assert!(
                policies_html().contains(&format!("id=\"{name}\"")),
                "the rendered page has the anchor {name}"
            );
        }
    }
}
