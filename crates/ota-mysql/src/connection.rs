//! The connection to MySQL: opening it (TLS as the URL's ssl-mode asks), every exchange
//! bounded in time, and what the server's errors mean to the sink.

use std::time::Duration;

use mysql_async::{Conn, DriverError, Opts, OptsBuilder, SslOpts};

use crate::config::{ConnectionSettings, SslMode};
use ota_core::error::{PipelineError, Result};

/// A MySQL exchange bounded in time: a server or network that stops answering fails the
/// step after `limit` instead of hanging it.
pub(crate) trait WithinDeadline<T>:
    Future<Output = std::result::Result<T, mysql_async::Error>> + Sized
{
    async fn within(self, limit: Duration, context: impl Into<String>) -> Result<T> {
        match tokio::time::timeout(limit, self).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(PipelineError::mysql(context, e)),
            Err(_) => Err(PipelineError::Timeout {
                context: format!("MySQL while {}", context.into()),
                secs: limit.as_secs(),
            }),
        }
    }
}

impl<T, F> WithinDeadline<T> for F where
    F: Future<Output = std::result::Result<T, mysql_async::Error>>
{
}

pub(crate) fn server_code(e: &mysql_async::Error) -> Option<u16> {
    match e {
        mysql_async::Error::Server(s) => Some(s.code),
        _ => None,
    }
}

/// Opens a connection; under `ssl-mode=preferred` a server that offers no TLS is
/// connected to in plain, as the MySQL client does.
pub(crate) async fn open(settings: &ConnectionSettings, opts: Opts) -> mysql_async::Result<Conn> {
    match Conn::new(opts.clone()).await {
        Err(mysql_async::Error::Driver(DriverError::NoClientSslFlagFromServer))
            if settings.ssl_mode == SslMode::Preferred =>
        {
            tracing::debug!("the server offers no TLS; connecting without it (ssl-mode=preferred)");
            Conn::new(OptsBuilder::from_opts(opts).ssl_opts(None::<SslOpts>)).await
        }
        other => other,
    }
}

/// How long the server keeps an idle session of ours: twice one exchange's limit, and at
/// least 10 s (the export also waits on the warehouse between statements, pinging).
pub(crate) fn idle_limit(io_timeout: Duration) -> Duration {
    (io_timeout * 2).max(Duration::from_secs(10))
}

pub(crate) fn refuses_local_infile(e: &mysql_async::Error) -> bool {
    // 1148: not allowed with this server; 3948/3950: local data disabled (MySQL 8);
    // 4166: MariaDB's equivalent; a driver error: the client could not send it.
    matches!(server_code(e), Some(1148 | 3948 | 3950 | 4166))
        || matches!(e, mysql_async::Error::Driver(_))
}

/// The GET_LOCK name of a target table (a digest, since lock names are limited to 64
/// characters and table names need not be).
pub fn lock_name(db: &str, table: &str) -> String {
    use md5::Digest;
    format!(
        "ota_export_{}",
        ota_core::hex::encode(&md5::Md5::digest(format!("{db}.{table}").as_bytes()))
    )
}
