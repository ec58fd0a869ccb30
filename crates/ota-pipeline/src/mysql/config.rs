//! Settings of the MySQL sink: the URL (with its TLS mode), the table, how batches are
//! loaded and how long anything may take. The URL carries the password, so everything
//! here that can be printed masks it.

use std::path::PathBuf;
use std::time::Duration;

use mysql_async::{Opts, OptsBuilder, SslOpts};
use serde::Serialize;

use crate::error::{PipelineError, Result};

/// How batches reach the serving table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum LoadMethod {
    /// LOAD DATA LOCAL INFILE, falling back to INSERT when the server refuses it.
    Auto,
    /// LOAD DATA LOCAL INFILE only.
    LoadData,
    /// Multi-row INSERT only.
    Insert,
}

/// Settings of the MySQL sink.
#[derive(Clone)]
pub struct MysqlConfig {
    /// `mysql://user:password@host:port/db[?ssl-mode=...&ssl-ca=...]`.
    pub url: String,
    pub table: String,
    pub load_method: LoadMethod,
    /// Seconds to wait for another run's lock on the table.
    pub lock_timeout_secs: u64,
    /// Seconds any one exchange with the server may take (connecting, a statement, a
    /// batch's LOAD DATA); also the session's row- and metadata-lock waits. A server or
    /// network that stops answering fails the step after this long instead of hanging.
    pub io_timeout_secs: u64,
}

/// The URL never reaches a log, an error or a Debug print unmasked.
impl std::fmt::Debug for MysqlConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MysqlConfig")
            .field("url", &mask_url(&self.url))
            .field("table", &self.table)
            .field("load_method", &self.load_method)
            .field("lock_timeout_secs", &self.lock_timeout_secs)
            .field("io_timeout_secs", &self.io_timeout_secs)
            .finish()
    }
}

/// Default of `--mysql-timeout`: long enough for a 50 000-row batch on a busy server.
pub const DEFAULT_IO_TIMEOUT_SECS: u64 = 300;
/// TCP keepalive probes on the connection, so a peer that vanished is noticed.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// `ssl-mode` of the URL, with the meanings of the MySQL client's `--ssl-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP (or the unix socket).
    Disabled,
    /// TLS when the server offers it, else plain; the certificate is not checked.
    Preferred,
    /// TLS or fail; the certificate is not checked (encryption only).
    Required,
    /// TLS with a certificate signed by the CA (`ssl-ca`, else the public roots); the
    /// host name is not checked.
    VerifyCa,
    /// As `VerifyCa`, and the certificate must name the host connected to.
    VerifyIdentity,
}

impl SslMode {
    /// The name the URL spells it with.
    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disabled => "disabled",
            SslMode::Preferred => "preferred",
            SslMode::Required => "required",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyIdentity => "verify-identity",
        }
    }

    /// The mode a URL's `ssl-mode` names; the error names the URL masked.
    fn parse(value: &str, url: &str) -> Result<SslMode> {
        match value.to_ascii_lowercase().replace('_', "-").as_str() {
            "disabled" => Ok(SslMode::Disabled),
            "preferred" => Ok(SslMode::Preferred),
            "required" => Ok(SslMode::Required),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-identity" => Ok(SslMode::VerifyIdentity),
            other => Err(PipelineError::Config(redact(
                &format!(
                    "MySQL URL {}: ssl-mode {other:?} is not one of disabled, preferred, \
                     required, verify-ca, verify-identity",
                    mask_url(url)
                ),
                url,
            ))),
        }
    }
}

/// What a MySQL URL says: the driver's options (TLS already applied), the TLS mode, and
/// the URL with its password masked.
#[derive(Clone)]
pub struct ConnectionSettings {
    pub opts: Opts,
    pub ssl_mode: SslMode,
    pub masked_url: String,
    pub io_timeout: Duration,
}

impl ConnectionSettings {
    /// Parses the URL of a config. Every error names the URL masked and never carries
    /// the password, even when the URL is malformed.
    pub fn from_config(config: &MysqlConfig) -> Result<ConnectionSettings> {
        if config.io_timeout_secs == 0 {
            return Err(PipelineError::Config(
                "--mysql-timeout must be at least 1 second".into(),
            ));
        }
        let masked_url = mask_url(&config.url);
        let (base, query) = match config.url.split_once('?') {
            Some((base, query)) => (base, query),
            None => (config.url.as_str(), ""),
        };
        let mut ssl_mode = SslMode::Preferred;
        let mut ssl_ca: Option<PathBuf> = None;
        let mut driver_params = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                "ssl-mode" | "ssl_mode" | "sslmode" => {
                    ssl_mode = SslMode::parse(value, &config.url)?
                }
                "ssl-ca" | "ssl_ca" => ssl_ca = Some(PathBuf::from(percent_decode(value))),
                _ => driver_params.push(pair),
            }
        }
        if ssl_ca.is_some() && !matches!(ssl_mode, SslMode::VerifyCa | SslMode::VerifyIdentity) {
            return Err(PipelineError::Config(format!(
                "MySQL URL {masked_url}: ssl-ca is only used with ssl-mode=verify-ca or verify-identity"
            )));
        }
        if let Some(ca) = &ssl_ca
            && !ca.is_file()
        {
            return Err(PipelineError::Config(format!(
                "MySQL URL {masked_url}: ssl-ca {} is not a readable file",
                ca.display()
            )));
        }
        let driver_url = if driver_params.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", driver_params.join("&"))
        };
        let opts = Opts::from_url(&driver_url).map_err(|e| {
            PipelineError::Config(format!(
                "MySQL URL {masked_url}: {}",
                redact(&e.to_string(), &config.url)
            ))
        })?;
        let mut builder = OptsBuilder::from_opts(opts).tcp_keepalive(Some(TCP_KEEPALIVE));
        let ssl = match ssl_mode {
            SslMode::Disabled => None,
            SslMode::Preferred | SslMode::Required => Some(
                SslOpts::default()
                    .with_danger_accept_invalid_certs(true)
                    .with_danger_skip_domain_validation(true),
            ),
            SslMode::VerifyCa | SslMode::VerifyIdentity => {
                let mut ssl = SslOpts::default()
                    .with_danger_skip_domain_validation(ssl_mode == SslMode::VerifyCa);
                if let Some(ca) = ssl_ca {
                    ssl = ssl
                        .with_root_certs(vec![ca.into()])
                        .with_disable_built_in_roots(true);
                }
                Some(ssl)
            }
        };
        if ssl_mode != SslMode::Disabled && ssl_mode != SslMode::Preferred {
            // The driver would otherwise switch a loopback connection to the unix socket,
            // which carries no TLS.
            builder = builder.prefer_socket(false);
        }
        builder = builder.ssl_opts(ssl);
        Ok(ConnectionSettings {
            opts: builder.into(),
            ssl_mode,
            masked_url,
            io_timeout: Duration::from_secs(config.io_timeout_secs),
        })
    }
}

/// `mysql://user:***@host:port/db`: the URL with its password masked, for logs. A URL
/// without a scheme (`user:pass@host/db`) is masked alike.
pub fn mask_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    // The query (`?ssl-ca=/path`) may hold an `@` of its own.
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    let Some((user, _)) = userinfo.split_once(':') else {
        return url.to_string();
    };
    let scheme = scheme.map(|s| format!("{s}://")).unwrap_or_default();
    // The password may be repeated anywhere, a parameter of the query included.
    let query = query
        .map(|q| format!("?{}", redact(q, url)))
        .unwrap_or_default();
    format!("{scheme}{user}:***@{host}{query}")
}

/// `text` with the password of `url` (as written and percent-decoded) replaced by `***`.
pub fn redact(text: &str, url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.split_once('?').map_or(rest, |(rest, _)| rest);
    let Some((userinfo, _)) = rest.rsplit_once('@') else {
        return text.to_string();
    };
    let Some((_, password)) = userinfo.split_once(':') else {
        return text.to_string();
    };
    let mut out = text.to_string();
    for secret in [password.to_string(), percent_decode(password)] {
        if !secret.is_empty() {
            out = out.replace(&secret, "***");
        }
    }
    out
}

/// `%XX` escapes decoded (bytes that do not form UTF-8 are kept as they were written).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> MysqlConfig {
        MysqlConfig {
            url: url.into(),
            table: "ota_events".into(),
            load_method: LoadMethod::Auto,
            lock_timeout_secs: 1,
            io_timeout_secs: 5,
        }
    }

    #[test]
    fn masks_passwords() {
        assert_eq!(
            mask_url("mysql://u:secret@h:3306/db"),
            "mysql://u:***@h:3306/db"
        );
        assert_eq!(mask_url("mysql://u@h/db"), "mysql://u@h/db");
        assert_eq!(mask_url("mysql://u:p@ss@h/db"), "mysql://u:***@h/db");
        assert_eq!(mask_url("ota:s3cret@host/db"), "ota:***@host/db");
        assert_eq!(
            mask_url("mysql://u:s3cret@h/db?x=s3cret"),
            "mysql://u:***@h/db?x=***"
        );
        assert_eq!(
            mask_url("mysql://u:pw@h/db?ssl-ca=/a@b/ca.pem"),
            "mysql://u:***@h/db?ssl-ca=/a@b/ca.pem"
        );
        assert_eq!(
            redact("bad s3cr@t and s3cr%40t", "u:s3cr%40t@h"),
            "bad *** and ***"
        );
    }

    #[test]
    fn no_error_or_debug_print_carries_the_password() {
        for url in [
            "ota:s3cret@host/db",
            "mysql://ota:s3cret@host/db?ssl-mode=bogus",
            "mysql://ota:s3cret@host/db?nonsense=s3cret",
            "mysql://ota:s3cret@host:notaport/db",
            "mysql://ota:s3cret@host/db?ssl-mode=required&ssl-ca=/nonexistent",
            "mysql://ota:s3cr%65t@host/db?ssl-mode=verify-ca&ssl-ca=/nonexistent",
        ] {
            let config = config(url);
            let err = ConnectionSettings::from_config(&config)
                .err()
                .unwrap_or_else(|| panic!("{url} should not parse"));
            let shown = format!("{err} {err:?} {config:?}");
            assert!(!shown.contains("s3cret"), "{shown}");
            assert!(err.exit_code() == 2, "{shown}");
        }
    }

    #[test]
    fn ssl_modes_parse_and_strict_ones_leave_the_socket_alone() {
        let parsed = |url: &str| ConnectionSettings::from_config(&config(url)).unwrap();
        let default = parsed("mysql://u@127.0.0.1/db");
        assert_eq!(default.ssl_mode, SslMode::Preferred);
        assert!(default.opts.ssl_opts().is_some() && default.opts.prefer_socket());
        let off = parsed("mysql://u@127.0.0.1/db?ssl-mode=DISABLED");
        assert!(off.opts.ssl_opts().is_none());
        let required = parsed("mysql://u@127.0.0.1/db?ssl-mode=required&socket=/x.sock");
        assert_eq!(required.ssl_mode, SslMode::Required);
        assert!(!required.opts.prefer_socket());
        assert_eq!(required.opts.socket(), Some("/x.sock"));
        assert_eq!(required.opts.tcp_keepalive(), Some(TCP_KEEPALIVE));
    }
}
