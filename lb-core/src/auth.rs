//! Bearer tokens: sending one with every call, and where a program reads its token
//! from.
//!
//! [`BearerTokenLayer`] is a `tower::Layer`: put it in front of any service (a
//! [`Balancer`](crate::Balancer), a tonic `Channel`, a proxy's backend) and every
//! request carries `authorization: Bearer <token>`, marked sensitive so that it is
//! not logged:
//!
//! ```
//! use lb_core::{Balancer, auth::BearerTokenLayer};
//! use tower::Layer;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), lb_core::Error> {
//! let balancer = Balancer::builder(lb_core::parse_endpoint_list("127.0.0.1:50051")?).build()?;
//! let with_token = BearerTokenLayer::new("s3cret")?.layer(balancer);
//! // let client = MyServiceClient::new(with_token);
//! assert!(BearerTokenLayer::new("with space").is_err());
//! # drop(with_token);
//! # Ok(()) }
//! ```
//!
//! A server that checks the token and the clients that call it must agree on it
//! without it appearing on a command line (where `ps` shows it to every user of the
//! machine): [`read_token`] takes it from a file, or from an environment variable.
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
//!
//! A side module: a tower layer over any client or server. May import: `error`.

use std::{
    path::Path,
    task::{Context, Poll},
};

use crate::Error;

/// A `tower::Layer` that sends `authorization: Bearer <token>` with every request
/// (replacing any the caller set), or, made with [`BearerTokenLayer::none`], passes
/// requests on unchanged.
#[derive(Clone, Debug, Default)]
pub struct BearerTokenLayer {
    value: Option<http::HeaderValue>,
}

impl BearerTokenLayer {
    /// Sends `token`, which must be visible ASCII (no spaces or control characters).
    pub fn new(token: &str) -> Result<Self, Error> {
        let invalid = || Error::InvalidToken {
            reason: "a token must be visible ASCII (no spaces or control characters)".into(),
        };
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid());
        }
        let mut value =
            http::HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| invalid())?;
        value.set_sensitive(true);
        Ok(Self { value: Some(value) })
    }

    /// Sends no token: for a program whose token is optional.
    pub fn none() -> Self {
        Self::default()
    }

    /// [`new`](Self::new) if there is a token, [`none`](Self::none) if not.
    pub fn optional(token: Option<&str>) -> Result<Self, Error> {
        token.map_or_else(|| Ok(Self::none()), Self::new)
    }
}

impl<S> tower::Layer<S> for BearerTokenLayer {
    type Service = BearerToken<S>;

    fn layer(&self, inner: S) -> BearerToken<S> {
        BearerToken {
            inner,
            value: self.value.clone(),
        }
    }
}

/// A service with a [`BearerTokenLayer`] in front.
#[derive(Clone, Debug)]
pub struct BearerToken<S> {
    inner: S,
    value: Option<http::HeaderValue>,
}

impl<S> BearerToken<S> {
    /// The service behind the layer.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S, B> tower::Service<http::Request<B>> for BearerToken<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> S::Future {
        if let Some(value) = &self.value {
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, value.clone());
        }
        self.inner.call(request)
    }
}

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
