//! `file://` targets: a JSON file of endpoints, watched for edits.

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use tokio::sync::watch;
use tracing::{info, warn};

use crate::{Endpoint, Error};

/// How often a watched file is checked for changes.
pub const FILE_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// The largest endpoints file read, in bytes: 1 MiB holds some 40,000 endpoints. A
/// larger file (or `/dev/zero`, or a pipe that keeps writing) is refused after reading
/// this much, not read into memory until it runs out. (A pipe that sends nothing is
/// waited for: point `file://` at regular files.)
pub const MAX_ENDPOINTS_FILE_BYTES: u64 = 1024 * 1024;

/// Reads an endpoints file: `{"endpoints": [...]}` or a bare JSON list of `host:port`
/// (optionally `=weight`) strings. Errors name the file and the line; a file larger
/// than [`MAX_ENDPOINTS_FILE_BYTES`] is an error naming the limit.
pub fn read_endpoints_file(path: &Path) -> Result<Vec<Endpoint>, Error> {
    use std::io::Read;
    let failed = |reason: String| Error::EndpointsFile {
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| failed(e.to_string()))?;
    let mut bytes = Vec::new();
    file.take(MAX_ENDPOINTS_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| failed(e.to_string()))?;
    if bytes.len() as u64 > MAX_ENDPOINTS_FILE_BYTES {
        return Err(failed(format!(
            "larger than the limit of {MAX_ENDPOINTS_FILE_BYTES} bytes (1 MiB) for an endpoints file"
        )));
    }
    let text = String::from_utf8(bytes).map_err(|e| failed(format!("not UTF-8 text: {e}")))?;
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

/// The endpoints in the text of an endpoints file (`{"endpoints": ["host:port", ...]}`
/// or a bare list), or why not, with the line (what [`read_endpoints_file`] reads).
pub fn parse_endpoints_json(text: &str) -> Result<Vec<Endpoint>, String> {
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
pub(super) async fn watch_file(path: PathBuf, tx: watch::Sender<Vec<Endpoint>>) {
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
