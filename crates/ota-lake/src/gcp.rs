//! What the Google Cloud backends (GCS lake, BigQuery warehouse) share: credentials (a
//! service-account key as a file or as JSON in the environment, Application Default
//! Credentials, or a fixed token for an emulator), HTTP status errors and a runtime that
//! lets the synchronous backend traits drive async clients.

use std::future::Future;
use std::path::PathBuf;

use ota_core::error::{PipelineError, Result};

/// A backend's credentials, ready to give tokens.
#[derive(Clone)]
pub enum Credentials {
    /// A fixed bearer token: only for emulators (`OTA_GCS_ENDPOINT`, `OTA_BQ_ENDPOINT`).
    Emulator,
    /// A Google account; tokens are fetched and refreshed by yup-oauth2.
    Account {
        /// Where the account came from, for messages (never the key itself).
        origin: String,
        auth: yup_oauth2::authenticator::DefaultAuthenticator,
        scope: &'static str,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Emulator => f.write_str("Credentials::Emulator"),
            Credentials::Account { origin, .. } => f
                .debug_struct("Credentials::Account")
                .field("origin", origin)
                .finish_non_exhaustive(),
        }
    }
}

/// Where one service's credentials come from, as the settings name them.
#[derive(Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// A service-account key file (`OTA_GCS_KEY_FILE`, `OTA_BQ_KEY_FILE`).
    KeyFile(PathBuf),
    /// A service-account key's JSON itself, from the variable named (`OTA_GCS_KEY_JSON`,
    /// `OTA_BQ_KEY_JSON`): how Airflow hands a connection's key to a task container
    /// without a file on the host.
    KeyJson { var: String, json: String },
    /// Application Default Credentials: the key file `GOOGLE_APPLICATION_CREDENTIALS`
    /// names, else the metadata server (GCE, GKE workload identity, Cloud Run) at its
    /// usual address or at `metadata_host` (`GCE_METADATA_HOST`, as in Google's clients).
    ApplicationDefault { metadata_host: Option<String> },
    /// An emulator endpoint, which gets a fixed token.
    Emulator,
}

impl std::fmt::Debug for CredentialSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CredentialSource::KeyFile(path) => f.debug_tuple("KeyFile").field(path).finish(),
            // The key is a secret: only the variable it came from is shown.
            CredentialSource::KeyJson { var, .. } => f
                .debug_struct("KeyJson")
                .field("var", var)
                .finish_non_exhaustive(),
            CredentialSource::ApplicationDefault { metadata_host } => f
                .debug_struct("ApplicationDefault")
                .field("metadata_host", metadata_host)
                .finish(),
            CredentialSource::Emulator => f.write_str("Emulator"),
        }
    }
}

/// The variables that name one service's credentials.
#[derive(Debug, Clone, Copy)]
pub struct CredentialVars {
    pub key_file: &'static str,
    pub key_json: &'static str,
    pub endpoint: &'static str,
}

impl CredentialSource {
    /// The key (file or JSON), or the emulator endpoint, `vars` name; with none of them,
    /// Application Default Credentials. A key and an endpoint together are refused: a real
    /// account's token must never be sent to an endpoint other than Google's; so are a
    /// key file and key JSON together (which one was meant?). `lookup` gives a setting's
    /// value by its variable's name: the CLI hands over the process environment.
    pub fn from_lookup(
        vars: CredentialVars,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<CredentialSource> {
        let set = |var: &str| lookup(var).filter(|v| !v.trim().is_empty());
        let CredentialVars {
            key_file,
            key_json,
            endpoint,
        } = vars;
        match (set(key_file), set(key_json), set(endpoint)) {
            (Some(_), Some(_), _) => Err(PipelineError::Config(format!(
                "{key_file} and {key_json} are both set: give the service-account key one way"
            ))),
            (Some(_), None, Some(_)) | (None, Some(_), Some(_)) => {
                let key = if set(key_file).is_some() {
                    key_file
                } else {
                    key_json
                };
                Err(PipelineError::Config(format!(
                    "{key} and {endpoint} are both set: a service-account token is never \
                     sent to a custom endpoint; unset {endpoint} to use Google's, or {key} \
                     to use the emulator"
                )))
            }
            (Some(file), None, None) => Ok(CredentialSource::KeyFile(PathBuf::from(file))),
            (None, Some(json), None) => Ok(CredentialSource::KeyJson {
                var: key_json.to_string(),
                json,
            }),
            (None, None, Some(_)) => Ok(CredentialSource::Emulator),
            (None, None, None) => Ok(CredentialSource::ApplicationDefault {
                metadata_host: set(METADATA_HOST_VAR).map(|h| h.trim().to_string()),
            }),
        }
    }
}

/// Where Google's clients find the metadata server when it is not the default one.
pub const METADATA_HOST_VAR: &str = "GCE_METADATA_HOST";
const METADATA_TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";

/// The token sent to emulators, which accept any.
pub const EMULATOR_TOKEN: &str = "emulator";

impl Credentials {
    /// Credentials from a source: reads the key and builds the token source; no token is
    /// fetched yet.
    pub async fn resolve(source: CredentialSource, scope: &'static str) -> Result<Credentials> {
        let account = |origin: String, built: std::io::Result<_>| match built {
            Ok(auth) => Ok(Credentials::Account {
                origin,
                auth,
                scope,
            }),
            Err(e) => Err(PipelineError::Config(format!("cannot use {origin}: {e}"))),
        };
        match source {
            CredentialSource::Emulator => Ok(Credentials::Emulator),
            CredentialSource::KeyFile(key_file) => {
                let origin = format!("the service-account key {}", key_file.display());
                let key = yup_oauth2::read_service_account_key(&key_file)
                    .await
                    .map_err(|e| PipelineError::Config(format!("cannot read {origin}: {e}")))?;
                let built = yup_oauth2::ServiceAccountAuthenticator::builder(key)
                    .build()
                    .await;
                account(origin, built)
            }
            CredentialSource::KeyJson { var, json } => {
                let origin = format!("the service-account key in {var}");
                // The parser's message may quote the input: it is not passed on.
                let key = yup_oauth2::parse_service_account_key(json.as_bytes()).map_err(|_| {
                    PipelineError::Config(format!(
                        "{var} does not hold a service-account key (JSON with client_email, \
                         private_key and token_uri)"
                    ))
                })?;
                let built = yup_oauth2::ServiceAccountAuthenticator::builder(key)
                    .build()
                    .await;
                account(origin, built)
            }
            CredentialSource::ApplicationDefault { metadata_host } => {
                use yup_oauth2::authenticator::ApplicationDefaultCredentialsTypes as Adc;
                let opts = yup_oauth2::ApplicationDefaultCredentialsFlowOpts {
                    metadata_url: metadata_host
                        .map(|host| format!("http://{host}{METADATA_TOKEN_PATH}")),
                };
                let (origin, built) =
                    match yup_oauth2::ApplicationDefaultCredentialsAuthenticator::builder(opts)
                        .await
                    {
                        Adc::ServiceAccount(builder) => (
                            "application default credentials (GOOGLE_APPLICATION_CREDENTIALS)",
                            builder.build().await,
                        ),
                        Adc::InstanceMetadata(builder) => (
                            "application default credentials (the metadata server)",
                            builder.build().await,
                        ),
                    };
                account(origin.to_string(), built)
            }
        }
    }

    /// A bearer token for the next request (cached and refreshed by the authenticator).
    pub async fn token(&self) -> Result<String> {
        match self {
            Credentials::Emulator => Ok(EMULATOR_TOKEN.to_string()),
            Credentials::Account {
                origin,
                auth,
                scope,
            } => {
                let token = auth.token(&[*scope]).await.map_err(|e| {
                    PipelineError::Internal(format!("cannot get a token with {origin}: {e}"))
                })?;
                token.token().map(str::to_string).ok_or_else(|| {
                    PipelineError::Internal(format!("{origin} gave no access token"))
                })
            }
        }
    }

    /// The same account with another scope (one account, two APIs).
    pub fn with_scope(&self, scope: &'static str) -> Credentials {
        match self {
            Credentials::Emulator => Credentials::Emulator,
            Credentials::Account { origin, auth, .. } => Credentials::Account {
                origin: origin.clone(),
                auth: auth.clone(),
                scope,
            },
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
        .map_err(|e| PipelineError::Internal(format!("cannot build the HTTP client: {e}")))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    const VARS: CredentialVars = CredentialVars {
        key_file: "T_KEY_FILE",
        key_json: "T_KEY_JSON",
        endpoint: "T_ENDPOINT",
    };

    fn source(set: &[(&str, &str)]) -> Result<CredentialSource> {
        CredentialSource::from_lookup(VARS, |var| {
            set.iter()
                .find(|(k, _)| *k == var)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn the_environment_names_one_source_and_never_a_key_with_an_endpoint() {
        assert_eq!(
            source(&[("T_KEY_FILE", "/k.json")]).ok(),
            Some(CredentialSource::KeyFile("/k.json".into()))
        );
        assert!(matches!(
            source(&[("T_KEY_JSON", "{}")]),
            Ok(CredentialSource::KeyJson { ref var, .. }) if var == "T_KEY_JSON"
        ));
        assert_eq!(
            source(&[("T_ENDPOINT", "http://127.0.0.1:1")]).ok(),
            Some(CredentialSource::Emulator)
        );
        assert_eq!(
            source(&[("GCE_METADATA_HOST", " 10.0.0.9:8080 ")]).ok(),
            Some(CredentialSource::ApplicationDefault {
                metadata_host: Some("10.0.0.9:8080".into())
            })
        );
        assert_eq!(
            source(&[("T_KEY_FILE", " ")]).ok(),
            Some(CredentialSource::ApplicationDefault {
                metadata_host: None
            })
        );
        for refused in [
            &[("T_KEY_FILE", "/k.json"), ("T_ENDPOINT", "http://e")][..],
            &[("T_KEY_JSON", "{}"), ("T_ENDPOINT", "http://e")],
            &[("T_KEY_FILE", "/k.json"), ("T_KEY_JSON", "{}")],
        ] {
            let err = source(refused).expect_err("refused").to_string();
            assert!(err.contains("both set"), "{err}");
        }
    }

    #[test]
    fn a_key_json_is_never_shown() {
        let secret = "{\"private_key\": \"s3cret-material\"}";
        let source = source(&[("T_KEY_JSON", secret)]).expect("a source");
        assert!(!format!("{source:?}").contains("s3cret"));
        let rt = BlockingRuntime::new().expect("runtime");
        let err = rt
            .block_on(Credentials::resolve(source, "scope"))
            .expect_err("not a key")
            .to_string();
        assert!(
            err.contains("T_KEY_JSON") && !err.contains("s3cret"),
            "{err}"
        );
    }

    /// A token endpoint on loopback: answers every request with a token, and keeps the
    /// request lines and headers it saw.
    fn token_server() -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream);
                let mut head = String::new();
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    head.push_str(&line);
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                log.lock().expect("log").push(head);
                let answer =
                    r#"{"access_token":"tok-from-test","expires_in":3600,"token_type":"Bearer"}"#;
                let _ = write!(
                    reader.get_mut(),
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                );
            }
        });
        (addr, seen)
    }

    /// A service-account key whose token_uri is `token_uri` (a fresh RSA key, by openssl).
    fn service_account_key(token_uri: &str) -> String {
        let out = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ])
            .output()
            .expect("openssl");
        assert!(out.status.success(), "openssl genpkey failed");
        serde_json::json!({
            "type": "service_account",
            "project_id": "ota-test",
            "private_key_id": "test",
            "private_key": String::from_utf8_lossy(&out.stdout),
            "client_email": "loader@ota-test.iam.gserviceaccount.com",
            "client_id": "1",
            "token_uri": token_uri,
        })
        .to_string()
    }

    #[test]
    fn a_key_as_json_or_as_a_file_gets_a_token_from_its_token_uri() {
        let (addr, seen) = token_server();
        let key = service_account_key(&format!("http://{addr}/token"));
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), &key).expect("write key");
        let rt = BlockingRuntime::new().expect("runtime");
        for source in [
            CredentialSource::KeyJson {
                var: "T_KEY_JSON".into(),
                json: key.clone(),
            },
            CredentialSource::KeyFile(file.path().to_path_buf()),
        ] {
            let credentials = rt
                .block_on(Credentials::resolve(
                    source,
                    "https://www.googleapis.com/auth/bigquery",
                ))
                .expect("credentials");
            assert_eq!(
                rt.block_on(credentials.token()).expect("token"),
                "tok-from-test"
            );
        }
        let seen = seen.lock().expect("log");
        assert!(
            seen.iter().all(|r| r.starts_with("POST /token")),
            "{seen:?}"
        );
        assert_eq!(seen.len(), 2);
    }

    #[test]
    fn application_default_credentials_use_the_metadata_server_without_a_key() {
        let (addr, seen) = token_server();
        // yup-oauth2 reads GOOGLE_APPLICATION_CREDENTIALS itself; only this test unsets
        // it, and nextest runs each test in its own process.
        unsafe {
            std::env::remove_var("GOOGLE_APPLICATION_CREDENTIALS");
        }
        let rt = BlockingRuntime::new().expect("runtime");
        let credentials = rt
            .block_on(Credentials::resolve(
                CredentialSource::ApplicationDefault {
                    metadata_host: Some(addr.clone()),
                },
                "https://www.googleapis.com/auth/devstorage.read_write",
            ))
            .expect("credentials");
        assert!(format!("{credentials:?}").contains("metadata server"));
        assert_eq!(
            rt.block_on(credentials.token()).expect("token"),
            "tok-from-test"
        );
        let seen = seen.lock().expect("log");
        assert!(
            seen[0].starts_with(
                "GET /computeMetadata/v1/instance/service-accounts/default/token?scopes="
            ) && seen[0]
                .to_ascii_lowercase()
                .contains("metadata-flavor: google"),
            "{seen:?}"
        );
    }
}
