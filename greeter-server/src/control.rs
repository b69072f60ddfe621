//! Commands on standard input (`greeter-server --control-stdin`): how a parent process,
//! such as `greeter-client playground`, changes a running server without a restart.
//!
//! The protocol is one line per command and one line per answer:
//!
//! ```text
//! stdout: serving 127.0.0.1:40123      (one per instance, once it listens)
//! stdout: ready
//! stdin:  latency 200ms                 (the delay added to every call from now on)
//! stdout: ok latency 200ms
//! stdin:  health not-serving            (or `health serving`)
//! stdout: ok health not-serving
//! stdin:  slow                          (anything else)
//! stdout: error: unknown command `slow` (commands: latency DURATION, health serving|not-serving, stop)
//! stdin:  stop                          (or end of input: the parent is gone)
//! ```
//!
//! End of input shuts the server down gracefully: a server started by a program
//! that dies, even by SIGKILL, does not outlive it.

use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

/// The longest command line read; longer ones are answered with an error.
pub const MAX_LINE: usize = 256;

/// The largest `latency` accepted: an hour is already far past any call's deadline.
pub const MAX_LATENCY: Duration = Duration::from_secs(3600);

/// One command from the parent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Add this delay to every call from now on.
    Latency(Duration),
    /// Report SERVING (`true`) or NOT_SERVING on the health service.
    Serving(bool),
    /// Shut down gracefully.
    Stop,
}

impl std::str::FromStr for Command {
    type Err = String;

    fn from_str(line: &str) -> Result<Self, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["latency", value] => {
                let latency = humantime::parse_duration(value)
                    .map_err(|e| format!("latency `{value}`: {e} (e.g. latency 200ms)"))?;
                if latency > MAX_LATENCY {
                    return Err(format!(
                        "latency {value} is more than the most allowed, {}",
                        humantime::format_duration(MAX_LATENCY)
                    ));
                }
                Ok(Self::Latency(latency))
            }
            ["health", "serving"] => Ok(Self::Serving(true)),
            ["health", "not-serving"] => Ok(Self::Serving(false)),
            ["stop"] => Ok(Self::Stop),
            _ => Err(format!(
                "unknown command `{}` (commands: latency DURATION, health serving|not-serving, stop)",
                line.trim()
            )),
        }
    }
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Latency(latency) => write!(f, "latency {}", humantime::format_duration(*latency)),
            Self::Serving(true) => f.write_str("health serving"),
            Self::Serving(false) => f.write_str("health not-serving"),
            Self::Stop => f.write_str("stop"),
        }
    }
}

/// Reads the next line of at most [`MAX_LINE`] bytes. `None` at end of input; a
/// longer line is consumed whole and returned as an error.
pub async fn next_line<R: AsyncBufRead + Unpin>(
    input: &mut R,
) -> std::io::Result<Option<Result<String, String>>> {
    let mut line = Vec::new();
    let read = (&mut *input)
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut line)
        .await?;
    if read == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') && line.len() > MAX_LINE {
        // Skip the rest of the line, a bounded buffer at a time.
        loop {
            let mut rest = Vec::new();
            let n = (&mut *input)
                .take(MAX_LINE as u64)
                .read_until(b'\n', &mut rest)
                .await?;
            if n == 0 || rest.last() == Some(&b'\n') {
                break;
            }
        }
        return Ok(Some(Err(format!("command longer than {MAX_LINE} bytes"))));
    }
    Ok(Some(match String::from_utf8(line) {
        Ok(text) => Ok(text.trim_end().to_string()),
        Err(_) => Err("command is not UTF-8".to_string()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_and_print_the_same() {
        for line in [
            "latency 200ms",
            "health serving",
            "health not-serving",
            "stop",
        ] {
            let command: Command = line.parse().unwrap();
            assert_eq!(command.to_string(), line);
        }
        assert_eq!(
            "latency 1s".parse::<Command>(),
            Ok(Command::Latency(Duration::from_secs(1)))
        );
    }

    #[test]
    fn bad_commands_say_what_is_accepted() {
        let err = "slow".parse::<Command>().unwrap_err();
        assert!(err.contains("unknown command `slow`"), "{err}");
        assert!(err.contains("latency DURATION"), "{err}");
        let err = "latency soon".parse::<Command>().unwrap_err();
        assert!(err.contains("latency `soon`"), "{err}");
        let err = "latency 2h".parse::<Command>().unwrap_err();
        assert!(err.contains("more than the most allowed, 1h"), "{err}");
    }

    #[tokio::test]
    async fn long_lines_are_refused_and_skipped() {
        let long = "x".repeat(MAX_LINE * 3);
        let input = format!("stop\n{long}\nlatency 1ms\n");
        let mut reader = tokio::io::BufReader::new(input.as_bytes());
        assert_eq!(
            next_line(&mut reader).await.unwrap(),
            Some(Ok("stop".into()))
        );
        let err = next_line(&mut reader).await.unwrap().unwrap().unwrap_err();
        assert!(err.contains("longer than 256 bytes"), "{err}");
        assert_eq!(
            next_line(&mut reader).await.unwrap(),
            Some(Ok("latency 1ms".into()))
        );
        assert_eq!(next_line(&mut reader).await.unwrap(), None);
    }
}
