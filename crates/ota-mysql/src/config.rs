//! Settings of the MySQL sink: the URL (with its TLS mode), the table, how batches are
//! loaded and how long anything may take. The URL carries the password, so everything
//! here that can be printed masks it.

use std::path::PathBuf;
use std::time::Duration;

use mysql_async::{Opts, OptsBuilder, SslOpts};
use serde::Serialize;

use ota_core::error::{PipelineError, Result};

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
        let parsed = parse_url(&config.url)
            .filter(|u| u.scheme() == "mysql")
            .ok_or_else(|| {
                PipelineError::Config(format!(
                    "MySQL URL {masked_url} is not a URL of the form \
                     mysql://user:password@host:3306/database: a password holding a \
                     character URLs reserve (/ ? # @ : % and space) must be \
                     percent-encoded (%2F %3F %23 %40 %3A %25 %20)"
                ))
            })?;
        let mut ssl_mode = SslMode::Preferred;
        let mut ssl_ca: Option<PathBuf> = None;
        let mut driver_params: Vec<(String, String)> = Vec::new();
        for (name, value) in parsed.query_pairs() {
            match name.as_ref() {
                "ssl-mode" | "ssl_mode" | "sslmode" => {
                    ssl_mode = SslMode::parse(&value, &config.url)?
                }
                "ssl-ca" | "ssl_ca" => ssl_ca = Some(PathBuf::from(value.as_ref())),
                _ => driver_params.push((name.into_owned(), value.into_owned())),
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
        let mut driver_url = parsed.clone();
        driver_url.set_query(None);
        if !driver_params.is_empty() {
            driver_url.query_pairs_mut().extend_pairs(&driver_params);
        }
        let opts = Opts::from_url(driver_url.as_str()).map_err(|e| {
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

/// A MySQL URL as the URL parser reads it, or None where it cannot be read as one
/// unambiguously: no host, a fragment, or an `@` left in the path (a password holding a
/// character URLs reserve — `/ ? # @ :` — not percent-encoded, so where it ends is a guess).
pub fn parse_url(raw: &str) -> Option<url::Url> {
    let parsed = url::Url::parse(raw).ok()?;
    let ambiguous = !parsed.has_host()
        || parsed.fragment().is_some()
        || parsed.path().contains('@')
        || (parsed.username().is_empty() && credentials_part(raw).is_some());
    (!ambiguous).then_some(parsed)
}

/// The text between the scheme and the last `@` (where a password may be), if any.
fn credentials_part(raw: &str) -> Option<&str> {
    let rest = raw.split_once("://").map_or(raw, |(_, rest)| rest);
    rest.rsplit_once('@').map(|(userinfo, _)| userinfo)
}

/// `mysql://user:***@host:port/db`: the URL with its password masked, for logs. A URL the
/// parser cannot read unambiguously (no scheme, reserved characters in the password) is
/// masked from the user name up to its last `@`, which may hide more than the password
/// but never less.
pub fn mask_url(raw: &str) -> String {
    if let Some(mut parsed) = parse_url(raw) {
        if parsed.password().is_none() {
            return raw.to_string();
        }
        let _ = parsed.set_password(Some("***"));
        // The password may be repeated anywhere, a parameter of the query included.
        let query = parsed.query().map(|q| redact(q, raw));
        parsed.set_query(query.as_deref());
        return parsed.to_string();
    }
    let (scheme, rest) = match raw.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), raw),
    };
    let Some((userinfo, after)) = rest.rsplit_once('@') else {
        return raw.to_string();
    };
    let Some((user, _)) = userinfo.split_once(':') else {
        return raw.to_string();
    };
    format!("{scheme}{user}:***@{}", redact(after, raw))
}

/// `text` with the password of `url` (as written and percent-decoded) replaced by `***`.
pub fn redact(text: &str, url: &str) -> String {
    let mut secrets: Vec<String> = Vec::new();
    if let Some(password) = parse_url(url).and_then(|u| u.password().map(str::to_string)) {
        secrets.push(percent_decode(&password));
        secrets.push(password);
    }
    if let Some((_, password)) = credentials_part(url).and_then(|u| u.split_once(':')) {
        secrets.push(percent_decode(password));
        secrets.push(password.to_string());
    }
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = text.to_string();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        out = out.replace(secret.as_str(), "***");
    }
    out
}

/// `%XX` escapes decoded (bytes that do not form UTF-8 are kept as they were written).
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map_or_else(|_| s.to_string(), |d| d.into_owned())
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
        // Reserved characters left unencoded: everything up to the last @ is hidden.
        for raw in [
            "mysql://u:pa?ss@h/db",
            "mysql://u:pa#ss@h/db",
            "mysql://u:pa/ss@h/db",
            "mysql://u:12/ss@h/db",
            "mysql://u:p:a@h/db",
        ] {
            let masked = mask_url(raw);
            assert_eq!(masked, "mysql://u:***@h/db", "{raw}");
        }
    }

    #[test]
    fn passwords_with_reserved_characters_must_be_percent_encoded() {
        for raw in [
            "mysql://ota:Kn0wn?Pa55@h/db",
            "mysql://ota:Kn0wn#Pa55@h/db",
            "mysql://ota:Kn0wn/Pa55@h/db",
            "mysql://ota:123/Pa55@h/db",
        ] {
            let err = ConnectionSettings::from_config(&config(raw))
                .err()
                .unwrap_or_else(|| panic!("{raw} should be refused"));
            let shown = format!("{err} {err:?}");
            for fragment in ["Kn0wn", "Pa55", "123"] {
                assert!(!shown.contains(fragment), "{shown}");
            }
            assert!(shown.contains("percent-encoded"), "{shown}");
            assert_eq!(err.exit_code(), 2);
        }
        let encoded = ConnectionSettings::from_config(&config("mysql://ota:Kn0wn%3FPa%2F55@h/db"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(encoded.opts.pass(), Some("Kn0wn?Pa/55"));
        assert_eq!(encoded.masked_url, "mysql://ota:***@h/db");
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
