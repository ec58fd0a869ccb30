//! What the Google Cloud backends (GCS lake, BigQuery warehouse) share: credentials from
//! a service-account key file (or a fixed token for an emulator), HTTP status errors and
//! a runtime that lets the synchronous backend traits drive async clients.

use std::future::Future;
use std::path::{Path, PathBuf};

use crate::error::{PipelineError, Result};

/// Where a backend's credentials come from.
#[derive(Clone)]
pub enum Credentials {
    /// A fixed bearer token: only for emulators (`OTA_GCS_ENDPOINT`, `OTA_BQ_ENDPOINT`).
    Emulator,
    /// A service-account key file; tokens are fetched and refreshed by yup-oauth2.
    ServiceAccount {
        key_file: PathBuf,
        auth: yup_oauth2::authenticator::DefaultAuthenticator,
        scope: &'static str,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Emulator => f.write_str("Credentials::Emulator"),
            Credentials::ServiceAccount { key_file, .. } => f
                .debug_struct("Credentials::ServiceAccount")
                .field("key_file", key_file)
                .finish_non_exhaustive(),
        }
    }
}

/// What the environment names as one service's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// A service-account key file.
    KeyFile(PathBuf),
    /// An emulator endpoint, which gets a fixed token.
    Emulator,
}

impl CredentialSource {
    /// The key file `key_var` names, or the emulator `endpoint_var` names. Both at once
    /// is refused: a real account's token must never be sent to an endpoint other than
    /// Google's.
    pub fn from_env(key_var: &str, endpoint_var: &str) -> Result<CredentialSource> {
        let set = |var: &str| std::env::var(var).ok().filter(|v| !v.trim().is_empty());
        match (set(key_var), set(endpoint_var)) {
            (Some(_), Some(_)) => Err(PipelineError::Config(format!(
                "{key_var} and {endpoint_var} are both set: a service-account token is never \
                 sent to a custom endpoint; unset {endpoint_var} to use Google's, or \
                 {key_var} to use the emulator"
            ))),
            (Some(key_file), None) => Ok(CredentialSource::KeyFile(PathBuf::from(key_file))),
            (None, Some(_)) => Ok(CredentialSource::Emulator),
            (None, None) => Err(PipelineError::Config(format!(
                "{key_var} must name the service-account key file (or {endpoint_var} an emulator)"
            ))),
        }
    }
}

/// The token sent to emulators, which accept any.
pub const EMULATOR_TOKEN: &str = "emulator";

impl Credentials {
    /// Credentials of one service: an emulator when `endpoint_var` is set, else the key
    /// file `key_var` names (each service has its own account and key).
    pub async fn from_env(
        key_var: &str,
        endpoint_var: &str,
        scope: &'static str,
    ) -> Result<Credentials> {
        match CredentialSource::from_env(key_var, endpoint_var)? {
            CredentialSource::KeyFile(key_file) => {
                Credentials::service_account(&key_file, scope).await
            }
            CredentialSource::Emulator => Ok(Credentials::Emulator),
        }
    }

    pub async fn service_account(key_file: &Path, scope: &'static str) -> Result<Credentials> {
        let key = yup_oauth2::read_service_account_key(key_file)
            .await
            .map_err(|e| {
                PipelineError::Config(format!(
                    "cannot read the service-account key {}: {e}",
                    key_file.display()
                ))
            })?;
        let auth = yup_oauth2::ServiceAccountAuthenticator::builder(key)
            .build()
            .await
            .map_err(|e| PipelineError::io(key_file, e))?;
        Ok(Credentials::ServiceAccount {
            key_file: key_file.to_path_buf(),
            auth,
            scope,
        })
    }

    /// A bearer token for the next request (cached and refreshed by the authenticator).
    pub async fn token(&self) -> Result<String> {
        match self {
            Credentials::Emulator => Ok(EMULATOR_TOKEN.to_string()),
            Credentials::ServiceAccount {
                key_file,
                auth,
                scope,
            } => {
                let token = auth.token(&[*scope]).await.map_err(|e| {
                    PipelineError::Config(format!(
                        "cannot get a token with the key {}: {e}",
                        key_file.display()
                    ))
                })?;
                token.token().map(str::to_string).ok_or_else(|| {
                    PipelineError::Config(format!(
                        "the key {} gave no access token",
                        key_file.display()
                    ))
                })
            }
        }
    }
}

/// A non-success HTTP answer, with the start of its body (the API's error message).
#[derive(Debug, thiserror::Error)]
#[error("HTTP {status}: {body}")]
pub struct HttpError {
    pub status: u16,
    pub body: String,
}

impl HttpError {
    /// Reads the error body of a failed response (at most 2 KB of it).
    pub async fn from_response(response: reqwest::Response) -> HttpError {
        let status = response.status().as_u16();
        let mut body = response.text().await.unwrap_or_default();
        if body.len() > 2048 {
            let mut cut = 2048;
            while !body.is_char_boundary(cut) {
                cut -= 1;
            }
            body.truncate(cut);
        }
        HttpError { status, body }
    }

    /// Worth retrying: rate limits and server-side failures.
    pub fn is_transient(&self) -> bool {
        self.status == 429 || self.status >= 500
    }
}

/// A runtime owned by a synchronous backend, for its async client. Works from plain
/// threads and from inside another (multi-threaded) runtime, as export-mysql calls it.
#[derive(Debug)]
pub struct BlockingRuntime {
    /// Always Some until dropped.
    runtime: Option<tokio::runtime::Runtime>,
}

impl BlockingRuntime {
    pub fn new() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ota-gcp")
            .enable_all()
            .build()
            .map_err(|e| PipelineError::io("tokio runtime", e))?;
        Ok(BlockingRuntime {
            runtime: Some(runtime),
        })
    }

    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        let Some(runtime) = self.runtime.as_ref() else {
            unreachable!("the runtime lives until the backend is dropped")
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::task::block_in_place(|| runtime.block_on(future))
        } else {
            runtime.block_on(future)
        }
    }
}

impl Drop for BlockingRuntime {
    /// The backend may be dropped inside another runtime (export-mysql's): shut down
    /// without blocking there. Every request has finished by then.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// An HTTP client with the timeouts every Google API call here uses.
pub fn http_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(20))
        .timeout(std::time::Duration::from_secs(600))
        .tcp_keepalive(std::time::Duration::from_secs(60))
        .build()
        .map_err(|e| PipelineError::Config(format!("cannot build the HTTP client: {e}")))
}

/// Retries `attempt` on transient failures (HTTP 429/5xx, connection errors) with
/// exponential backoff: 1 s, 2 s, 4 s, ... up to `tries` attempts.
pub async fn with_retries<T, F, Fut>(tries: u32, mut attempt: F) -> Result<T, RequestError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, RequestError>>,
{
    let mut delay = std::time::Duration::from_secs(1);
    let mut left = tries.max(1);
    loop {
        match attempt().await {
            Err(e) if left > 1 && e.is_transient() => {
                tracing::warn!(error = %e, retry_in = ?delay, "transient error; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(32));
                left -= 1;
            }
            other => return other,
        }
    }
}

/// Whether a response body broke off mid-transfer (a reset or closed connection), which
/// reqwest reports as a body error, possibly inside a decode error.
pub fn body_cut_off(e: &reqwest::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<reqwest::Error>()
            .is_some_and(reqwest::Error::is_body)
        {
            return true;
        }
        cause = c.source();
    }
    false
}

/// Why one HTTP request failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("request failed: {0}")]
    Transport(#[from] reqwest::Error),
    #[error(transparent)]
    Pipeline(#[from] Box<PipelineError>),
}

impl RequestError {
    pub fn is_transient(&self) -> bool {
        match self {
            RequestError::Http(h) => h.is_transient(),
            RequestError::Transport(e) => {
                e.is_connect() || e.is_timeout() || e.is_request() || body_cut_off(e)
            }
            RequestError::Pipeline(_) => false,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            RequestError::Http(h) => Some(h.status),
            _ => None,
        }
    }
}
