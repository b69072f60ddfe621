//! Resolvers: where the endpoint list comes from, and how it changes.
//!
//! gRPC names what to connect to with a *target URI*; its scheme picks the resolver,
//! which produces the endpoint list and, in the background, every change to it. The
//! balancer follows those changes ([`Balancer::follow`](crate::Balancer::follow))
//! without any call having to notice.
//!
//! | target | resolver |
//! |---|---|
//! | `127.0.0.1:50051,127.0.0.1:50052` or `static:127.0.0.1:50051,...` | a fixed list |
//! | `file:///etc/greeter/endpoints.json` | a JSON file, watched: edits apply within a second |
//!
//! The file holds `{"endpoints": ["127.0.0.1:50051", "127.0.0.1:50052=3"]}` (or just the
//! list). A malformed edit is logged with the file's name and the line of the mistake,
//! and the last good list stays in force, so a typo cannot empty the fleet.
//!
//! ```
//! use lb_core::resolver::Target;
//!
//! let target: Target = "127.0.0.1:50051,127.0.0.1:50052".parse().unwrap();
//! assert!(matches!(target, Target::Static(ref list) if list.len() == 2));
//! let target: Target = "file:///etc/greeter/endpoints.json".parse().unwrap();
//! assert!(matches!(target, Target::File(_)));
//! assert!("dns:///greeter:50051".parse::<Target>().is_err()); // not yet
//! ```

use std::{
    path::{Path, PathBuf},
    str::FromStr,
    time::{Duration, SystemTime},
};

use tokio::sync::watch;
use tracing::{info, warn};

use crate::{Endpoint, Error, endpoint::parse_endpoint_list};

/// How often a watched file is checked for changes.
pub const FILE_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Where endpoints come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// A fixed list.
    Static(Vec<Endpoint>),
    /// A JSON file, re-read whenever it changes.
    File(PathBuf),
}

impl FromStr for Target {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let text = text.trim();
        let invalid = |reason: String| Error::InvalidTarget {
            target: text.to_string(),
            reason,
        };
        if let Some(list) = text.strip_prefix("static:") {
            return Ok(Self::Static(parse_endpoint_list(list)?));
        }
        if let Some(rest) = text.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(invalid(
                    "a file target needs an absolute path: file:///path/to/endpoints.json".into(),
                ));
            }
            return Ok(Self::File(PathBuf::from(rest)));
        }
        if let Some((scheme, _)) = text.split_once("://") {
            return Err(invalid(format!(
                "no resolver for `{scheme}:` (supported: a host:port list, static:, file://)"
            )));
        }
        Ok(Self::Static(parse_endpoint_list(text)?))
    }
}

impl Target {
    /// Resolves the target: the endpoints now, and a channel carrying every later
    /// change (a background task watches a file). Fails if the first read fails.
    ///
    /// Must be called inside a Tokio runtime when the target is a file.
    pub fn resolve(&self) -> Result<watch::Receiver<Vec<Endpoint>>, Error> {
        match self {
            Self::Static(list) => Ok(watch::channel(list.clone()).1),
            Self::File(path) => {
                let endpoints = read_endpoints_file(path)?;
                let (tx, rx) = watch::channel(endpoints);
                tokio::spawn(watch_file(path.clone(), tx));
                Ok(rx)
            }
        }
    }
}

/// Reads an endpoints file: `{"endpoints": [...]}` or a bare JSON list of `host:port`
/// (optionally `=weight`) strings. Errors name the file and the line.
pub fn read_endpoints_file(path: &Path) -> Result<Vec<Endpoint>, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::EndpointsFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    parse_endpoints_json(&text).map_err(|reason| Error::EndpointsFile {
        path: path.to_path_buf(),
        reason,
    })
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum File {
    Object { endpoints: Vec<String> },
    List(Vec<String>),
}

fn parse_endpoints_json(text: &str) -> Result<Vec<Endpoint>, String> {
    let file: File = serde_json::from_str(text).map_err(|e| {
        format!(
            "line {}, column {}: {e} (expected {{\"endpoints\": [\"host:port\", ...]}})",
            e.line(),
            e.column()
        )
    })?;
    let (File::Object { endpoints } | File::List(endpoints)) = file;
    endpoints
        .iter()
        .map(|entry| {
            entry.parse::<Endpoint>().map_err(|e| {
                let line = text
                    .find(&format!("\"{entry}\""))
                    .map_or(0, |at| text[..at].lines().count().max(1));
                format!("line {line}: {e}")
            })
        })
        .collect()
}

/// Re-reads `path` whenever its size or modification time changes, until nobody
/// listens any more.
async fn watch_file(path: PathBuf, tx: watch::Sender<Vec<Endpoint>>) {
    let stamp = |path: &Path| -> Option<(SystemTime, u64)> {
        let meta = std::fs::metadata(path).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    };
    let mut last = stamp(&path);
    let mut ticks = tokio::time::interval(FILE_POLL_INTERVAL);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = tx.closed() => return,
        }
        let now = stamp(&path);
        if now == last {
            continue;
        }
        last = now;
        match read_endpoints_file(&path) {
            Ok(endpoints) => {
                if tx.send_if_modified(|current| {
                    let changed = *current != endpoints;
                    *current = endpoints.clone();
                    changed
                }) {
                    let list: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
                    info!(file = %path.display(), endpoints = %list.join(","), "endpoints changed");
                }
            }
            Err(err) => warn!("{err}; keeping the last good endpoints"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_unknown_schemes_are_named() {
        assert_eq!(
            "static:127.0.0.1:1".parse::<Target>().unwrap(),
            Target::Static(vec!["127.0.0.1:1".parse().unwrap()])
        );
        let err = "etcd://127.0.0.1:2379/greeter"
            .parse::<Target>()
            .unwrap_err();
        assert!(err.to_string().contains("no resolver for `etcd:`"), "{err}");
        let err = "file://relative.json".parse::<Target>().unwrap_err();
        assert!(err.to_string().contains("absolute path"), "{err}");
        let err = "127.0.0.1:1,oops".parse::<Target>().unwrap_err();
        assert!(err.to_string().contains("invalid endpoint `oops`"), "{err}");
    }

    #[test]
    fn files_hold_an_object_or_a_list() {
        let both = [
            r#"{"endpoints": ["127.0.0.1:1", "127.0.0.1:2=3"]}"#,
            r#"["127.0.0.1:1", "127.0.0.1:2=3"]"#,
        ];
        for text in both {
            let endpoints = parse_endpoints_json(text).unwrap();
            assert_eq!(endpoints.len(), 2);
            assert_eq!(endpoints[1].weight(), 3);
        }
    }

    #[test]
    fn mistakes_name_the_line() {
        let text = "{\n  \"endpoints\": [\n    \"127.0.0.1:1\",\n  ]\n}";
        let err = parse_endpoints_json(text).unwrap_err();
        assert!(err.starts_with("line 4,"), "{err}");
        let text = "{\n  \"endpoints\": [\n    \"127.0.0.1:1\",\n    \"nope\"\n  ]\n}";
        let err = parse_endpoints_json(text).unwrap_err();
        assert!(err.starts_with("line 4: invalid endpoint `nope`"), "{err}");
    }

    #[test]
    fn file_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("lb-resolver-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("endpoints.json");
        std::fs::write(&path, "{oops").unwrap();
        let err = read_endpoints_file(&path).unwrap_err().to_string();
        assert!(
            err.contains("endpoints.json") && err.contains("line 1"),
            "{err}"
        );
        let err = read_endpoints_file(&dir.join("missing.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.json"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
