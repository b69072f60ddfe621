//! Bearer tokens: where a program reads its token from.
//!
//! A server that checks `authorization: Bearer <token>` and the clients that call it
//! must agree on the token without it appearing on a command line (where `ps` shows it
//! to every user of the machine): it comes from a file, or from an environment
//! variable.
//!
//! ```
//! # fn main() -> Result<(), lb_core::Error> {
//! let dir = std::env::temp_dir().join(format!("lb-auth-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let file = dir.join("token");
//! std::fs::write(&file, "s3cret\n").unwrap();
//! assert_eq!(lb_core::auth::read_token(Some(&file), "NO_SUCH_VAR")?, Some("s3cret".into()));
//! assert_eq!(lb_core::auth::read_token(None, "NO_SUCH_VAR")?, None);
//! # std::fs::remove_dir_all(dir).unwrap();
//! # Ok(()) }
//! ```

use std::path::Path;

use crate::Error;

/// The token in `file` (its first line, trimmed) if given, else in the environment
/// variable `env_var` if set, else `None`. An unreadable file or an empty token is an
/// error naming where it came from.
pub fn read_token(file: Option<&Path>, env_var: &str) -> Result<Option<String>, Error> {
    let (token, source) = match file {
        Some(file) => {
            let text = std::fs::read_to_string(file).map_err(|e| Error::InvalidToken {
                reason: format!("cannot read {}: {e}", file.display()),
            })?;
            let first = text.lines().next().unwrap_or_default().trim().to_string();
            (first, file.display().to_string())
        }
        None => match std::env::var(env_var) {
            Ok(value) => (value.trim().to_string(), format!("${env_var}")),
            Err(_) => return Ok(None),
        },
    };
    if token.is_empty() {
        return Err(Error::InvalidToken {
            reason: format!("{source} holds no token"),
        });
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::InvalidToken {
            reason: format!("the token in {source} must be visible ASCII (no spaces)"),
        });
    }
    Ok(Some(token))
}
