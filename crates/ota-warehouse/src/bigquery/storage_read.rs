//! Reads a table (a query's result) through the BigQuery Storage Read API as Arrow record
//! batches: one read session with a single stream, so an `ORDER BY` result arrives in
//! order, one batch in memory at a time.

use std::io::Cursor;

use arrow::array::RecordBatch;
use arrow::ipc::reader::StreamReader;
use gcp_bigquery_client::google::cloud::bigquery::storage::v1::big_query_read_client::BigQueryReadClient;
use gcp_bigquery_client::google::cloud::bigquery::storage::v1::{
    CreateReadSessionRequest, DataFormat, ReadRowsRequest, ReadRowsResponse, ReadSession,
    read_rows_response, read_session,
};
use gcp_bigquery_client::model::table_reference::TableReference;
use tonic::Streaming;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use ota_core::error::{PipelineError, Result};
use ota_lake::gcp::{BlockingRuntime, Credentials};

/// Scope of the BigQuery account's token for the Storage API.
pub const BIGQUERY_SCOPE: &str = "https://www.googleapis.com/auth/bigquery";

fn err(context: &str) -> impl FnOnce(tonic::Status) -> PipelineError + '_ {
    move |status| PipelineError::Warehouse {
        context: context.to_string(),
        source: format!("Storage Read API: {}: {}", status.code(), status.message()).into(),
    }
}

/// One open read stream over a table.
pub struct ArrowTableReader<'r> {
    runtime: &'r BlockingRuntime,
    stream: Option<Streaming<ReadRowsResponse>>,
    schema: Vec<u8>,
}

/// Opens a single-stream Arrow read session over `table`. None (with a warning) when
/// the API cannot serve it: the table is not readable this way (not found) or the
/// account may not create read sessions; the caller then pages the job's result.
pub fn open<'r>(
    runtime: &'r BlockingRuntime,
    endpoint: &str,
    credentials: &Credentials,
    table: &TableReference,
) -> Result<Option<ArrowTableReader<'r>>> {
    let endpoint = endpoint.to_string();
    let table_path = format!(
        "projects/{}/datasets/{}/tables/{}",
        table.project_id, table.dataset_id, table.table_id
    );
    let opened = runtime.block_on(async {
        let token = credentials.token().await?;
        let bad_endpoint = |e: tonic::transport::Error| {
            PipelineError::Config(format!("Storage Read API endpoint {endpoint}: {e}"))
        };
        let mut channel = Endpoint::from_shared(endpoint.clone())
            .map_err(bad_endpoint)?
            .connect_timeout(std::time::Duration::from_secs(20));
        if endpoint.starts_with("https://") {
            channel = channel
                .tls_config(ClientTlsConfig::new().with_native_roots())
                .map_err(bad_endpoint)?;
        }
        let channel: Channel = channel.connect().await.map_err(bad_endpoint)?;
        let bearer: MetadataValue<_> = format!("Bearer {token}").parse().map_err(|_| {
            PipelineError::Internal("the access token is not a header value".into())
        })?;
        let routing: MetadataValue<_> = format!("read_session.table={table_path}")
            .parse()
            .map_err(|_| PipelineError::Internal("the table name is not a header value".into()))?;
        let mut client =
            BigQueryReadClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
                req.metadata_mut().insert("authorization", bearer.clone());
                req.metadata_mut()
                    .insert("x-goog-request-params", routing.clone());
                Ok(req)
            });
        let session = client
            .create_read_session(CreateReadSessionRequest {
                parent: format!("projects/{}", table.project_id),
                read_session: Some(ReadSession {
                    table: table_path.clone(),
                    data_format: DataFormat::Arrow as i32,
                    ..Default::default()
                }),
                // One stream keeps the rows in the result's order.
                max_stream_count: 1,
                ..Default::default()
            })
            .await;
        let session = match session {
            Ok(s) => s.into_inner(),
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::NotFound
                        | tonic::Code::PermissionDenied
                        | tonic::Code::Unimplemented
                ) =>
            {
                tracing::warn!(
                    table = %table_path,
                    code = %status.code(),
                    "the Storage Read API cannot read the result; paging it through the REST API"
                );
                return Ok(None);
            }
            Err(status) => return Err(err("opening a read session")(status)),
        };
        let schema = match session.schema {
            Some(read_session::Schema::ArrowSchema(s)) => s.serialized_schema,
            _ => Vec::new(),
        };
        let Some(stream) = session.streams.first() else {
            // An empty result has no stream.
            return Ok(Some((None, schema)));
        };
        let rows = client
            .read_rows(ReadRowsRequest {
                read_stream: stream.name.clone(),
                offset: 0,
            })
            .await
            .map_err(err("reading rows"))?
            .into_inner();
        Ok::<_, PipelineError>(Some((Some(rows), schema)))
    })?;
    Ok(opened.map(|(stream, schema)| ArrowTableReader {
        runtime,
        stream,
        schema,
    }))
}

impl ArrowTableReader<'_> {
    /// The next record batch, or None at the end.
    pub fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        loop {
            let Some(stream) = self.stream.as_mut() else {
                return Ok(None);
            };
            let message = self
                .runtime
                .block_on(stream.message())
                .map_err(err("reading rows"))?;
            let Some(message) = message else {
                self.stream = None;
                return Ok(None);
            };
            if let Some(read_rows_response::Schema::ArrowSchema(s)) = message.schema
                && self.schema.is_empty()
            {
                self.schema = s.serialized_schema;
            }
            if let Some(read_rows_response::Rows::ArrowRecordBatch(batch)) = message.rows
                && let Some(batch) = decode(&self.schema, &batch.serialized_record_batch)?
            {
                return Ok(Some(batch));
            }
        }
    }
}

/// The IPC end-of-stream marker (continuation token, zero length).
const END_OF_STREAM: [u8; 8] = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];

/// A record batch from the session's IPC schema message and one IPC batch message. Some
/// servers send each as a complete IPC stream (with its end marker): those are read too.
fn decode(schema: &[u8], batch: &[u8]) -> Result<Option<RecordBatch>> {
    let schema = schema.strip_suffix(&END_OF_STREAM).unwrap_or(schema);
    let mut buf = Vec::with_capacity(schema.len() + batch.len());
    buf.extend_from_slice(schema);
    buf.extend_from_slice(batch);
    let first = read_first(buf);
    match first {
        Ok(Some(batch)) => Ok(Some(batch)),
        // The batch message may be a stream of its own, schema included.
        _ => match read_first(batch.to_vec()) {
            Ok(found) => Ok(found),
            Err(e) => first.or(Err(e)),
        },
    }
}

fn read_first(bytes: Vec<u8>) -> Result<Option<RecordBatch>> {
    let mut reader = StreamReader::try_new(Cursor::new(bytes), None)
        .map_err(|e| PipelineError::arrow("decoding a Storage Read API schema", e))?;
    reader
        .next()
        .transpose()
        .map_err(|e| PipelineError::arrow("decoding a Storage Read API batch", e))
}
