//! `file://` targets: a JSON file of endpoints, watched for edits.

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use tokio::sync::watch;
use tracing::{info, warn};

use serde_json::Value;

use super::attributes::with_attributes;
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
    Object { endpoints: Vec<Value> },
    List(Vec<Value>),
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
        .enumerate()
        .map(|(i, entry)| {
            read_entry(entry).map_err(|e| {
                // The line the entry's address is on, for the one who edits the file.
                let address = match entry {
                    Value::Object(fields) => fields.get("address").and_then(Value::as_str),
                    other => other.as_str(),
                };
                let line = address
                    .and_then(|a| text.find(&format!("\"{a}\"")))
                    .map_or(0, |at| text[..at].lines().count().max(1));
                match entry {
                    Value::String(_) => format!("line {line}: {e}"),
                    _ => format!("line {line}: endpoints[{i}]: {e}"),
                }
            })
        })
        .collect()
}

/// One entry: `"host:port[=W][@LOCALITY][#P]"`, or the same as an object,
/// `{"address": "host:port", "weight": 3, "locality": "zone-a", "priority": 1}`, whose
/// locality may also be `{"region": ..., "zone": ..., "subZone": ...}`.
fn read_entry(entry: &Value) -> Result<Endpoint, String> {
    let fields = match entry {
        Value::String(text) => return text.parse::<Endpoint>().map_err(|e| e.to_string()),
        Value::Object(fields) => fields,
        other => {
            return Err(format!(
                "expected \"host:port\" or {{\"address\": ...}}, not {other}"
            ));
        }
    };
    if let Some(field) = fields
        .keys()
        .find(|k| !["address", "weight", "locality", "priority"].contains(&k.as_str()))
    {
        return Err(format!(
            "unknown field `{field}` (known: address, weight, locality, priority)"
        ));
    }
    let address = fields
        .get("address")
        .and_then(Value::as_str)
        .ok_or("address: missing (\"host:port\")")?;
    let endpoint: Endpoint = address
        .parse()
        .map_err(|e: Error| format!("address: {e}"))?;
    with_attributes(endpoint, fields)
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
    fn entries_carry_localities_and_priorities() {
        let text = r#"{"endpoints": [
            "127.0.0.1:1@zone-a",
            {"address": "127.0.0.1:2", "weight": 2, "locality": {"region": "us-east", "zone": "zone-b"}, "priority": 1},
            {"address": "127.0.0.1:3", "locality": "zone-c"}
        ]}"#;
        let endpoints = parse_endpoints_json(text).unwrap();
        let names: Vec<_> = endpoints
            .iter()
            .map(|e| e.locality().unwrap().name().to_string())
            .collect();
        assert_eq!(names, ["zone-a", "us-east/zone-b", "zone-c"]);
        assert_eq!((endpoints[1].weight(), endpoints[1].priority()), (2, 1));
        let bad = [
            (
                r#"[{"address": "127.0.0.1:2", "zone": "a"}]"#,
                "line 1: endpoints[0]: unknown field `zone`",
            ),
            (r#"[{"weight": 2}]"#, "endpoints[0]: address: missing"),
            (
                r#"[{"address": "127.0.0.1:2", "priority": 100}]"#,
                "priority: 100 is not",
            ),
            (
                r#"[{"address": "127.0.0.1:2", "locality": {"zone": "a b"}}]"#,
                "locality: zone `a b`",
            ),
            (r#"[3]"#, "endpoints[0]: expected \"host:port\""),
        ];
        for (text, expected) in bad {
            let err = parse_endpoints_json(text).unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
        }
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
