//! A small client for the parts of the GCS JSON API the lake uses: paginated prefix
//! listing, object metadata, pinned-generation download and (resumable) upload.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::DateTime;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::gcp::{Credentials, HttpError, RequestError, with_retries};
use ota_core::error::PipelineError;

/// Objects up to this size go up in one request; larger ones in resumable chunks.
pub const SIMPLE_UPLOAD_LIMIT: u64 = 8 << 20;
/// Resumable upload chunk: a multiple of 256 KiB, as GCS requires.
pub const UPLOAD_CHUNK: usize = 16 << 20;
/// Attempts per request before a transient failure is reported.
const TRIES: u32 = 5;

const OBJECT_FIELDS: &str = "name,size,generation,crc32c,timeCreated";

/// The metadata of one object the lake needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub name: String,
    pub size: u64,
    pub generation: String,
    /// crc32c of the content.
    pub crc32c: u32,
    /// Creation time of this generation, UTC microseconds.
    pub created_micros: i64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ObjectResource {
    name: String,
    size: String,
    generation: String,
    crc32c: Option<String>,
    time_created: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ObjectList {
    #[serde(default)]
    items: Vec<ObjectResource>,
    next_page_token: Option<String>,
}

impl ObjectResource {
    fn into_meta(self) -> Result<ObjectMeta, RequestError> {
        let bad = |what: &str| {
            RequestError::Pipeline(Box::new(PipelineError::BadFile {
                uri: self.name.clone(),
                reason: format!("GCS returned an unreadable {what}"),
            }))
        };
        let size = self.size.parse().map_err(|_| bad("size"))?;
        let crc32c = self
            .crc32c
            .as_deref()
            .and_then(crc32c_from_base64)
            .ok_or_else(|| bad("crc32c"))?;
        let created_micros = DateTime::parse_from_rfc3339(&self.time_created)
            .map_err(|_| bad("timeCreated"))?
            .timestamp_micros();
        Ok(ObjectMeta {
            name: self.name,
            size,
            generation: self.generation,
            crc32c,
            created_micros,
        })
    }
}

/// GCS's crc32c: the big-endian bytes of the checksum, base64.
pub fn crc32c_from_base64(text: &str) -> Option<u32> {
    let bytes: [u8; 4] = BASE64.decode(text).ok()?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}

pub fn crc32c_to_base64(crc: u32) -> String {
    BASE64.encode(crc.to_be_bytes())
}

/// What an object name keeps unencoded in a URL path segment: RFC 3986's unreserved
/// characters (a `/` in the name is encoded, as the JSON API requires).
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes an object name for a URL path segment.
fn encode_name(name: &str) -> String {
    utf8_percent_encode(name, PATH_SEGMENT).to_string()
}

/// The GCS JSON API at one endpoint, with one account's credentials.
#[derive(Debug, Clone)]
pub struct GcsClient {
    http: reqwest::Client,
    endpoint: String,
    credentials: Credentials,
    page_size: u32,
}

impl GcsClient {
    pub fn new(http: reqwest::Client, endpoint: &str, credentials: Credentials) -> Self {
        GcsClient {
            http,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            credentials,
            page_size: 1000,
        }
    }

    /// Objects per listing page (GCS's maximum, 1000, by default).
    pub fn with_page_size(mut self, page_size: u32) -> Self {
        self.page_size = page_size.clamp(1, 1000);
        self
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, RequestError> {
        let token = self.credentials.token().await.map_err(Box::new)?;
        let response = request.bearer_auth(token).send().await?;
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(HttpError::from_response(response).await.into())
        }
    }

    fn object_url(&self, bucket: &str, name: &str) -> String {
        format!(
            "{}/storage/v1/b/{}/o/{}",
            self.endpoint,
            encode_name(bucket),
            encode_name(name)
        )
    }

    /// Every object whose name starts with `prefix`, following page tokens.
    pub async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ObjectMeta>, RequestError> {
        let url = format!("{}/storage/v1/b/{}/o", self.endpoint, encode_name(bucket));
        let fields = format!("items({OBJECT_FIELDS}),nextPageToken");
        let mut objects = Vec::new();
        let page_size = self.page_size.to_string();
        let mut page: Option<String> = None;
        loop {
            let list: ObjectList = with_retries(TRIES, || async {
                let mut query = vec![
                    ("prefix", prefix),
                    ("fields", fields.as_str()),
                    ("maxResults", page_size.as_str()),
                ];
                if let Some(token) = &page {
                    query.push(("pageToken", token.as_str()));
                }
                let response = self.send(self.http.get(&url).query(&query)).await?;
                Ok(response.json().await?)
            })
            .await?;
            for item in list.items {
                objects.push(item.into_meta()?);
            }
            match list.next_page_token {
                Some(token) if !token.is_empty() => page = Some(token),
                _ => return Ok(objects),
            }
        }
    }

    /// The metadata of one object (None: it does not exist).
    pub async fn get(&self, bucket: &str, name: &str) -> Result<Option<ObjectMeta>, RequestError> {
        let url = self.object_url(bucket, name);
        let result = with_retries(TRIES, || async {
            let response = self
                .send(self.http.get(&url).query(&[("fields", OBJECT_FIELDS)]))
                .await?;
            Ok(response.json::<ObjectResource>().await?)
        })
        .await;
        match result {
            Ok(resource) => Ok(Some(resource.into_meta()?)),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes an object (a missing one is not an error).
    pub async fn delete(&self, bucket: &str, name: &str) -> Result<(), RequestError> {
        let url = self.object_url(bucket, name);
        let result = with_retries(TRIES, || async {
            self.send(self.http.delete(&url)).await?;
            Ok(())
        })
        .await;
        match result {
            Err(e) if e.status() == Some(404) => Ok(()),
            other => other,
        }
    }

    /// Downloads exactly `generation` of an object into `dest`, checking its crc32c.
    pub async fn download(
        &self,
        object: &ObjectMeta,
        bucket: &str,
        dest: &Path,
    ) -> Result<(), RequestError> {
        let url = self.object_url(bucket, &object.name);
        with_retries(TRIES, || async {
            let mut response = self
                .send(
                    self.http
                        .get(&url)
                        .query(&[("alt", "media"), ("generation", object.generation.as_str())]),
                )
                .await?;
            let io = |e| RequestError::Pipeline(Box::new(PipelineError::io(dest, e)));
            let mut file = tokio::fs::File::create(dest).await.map_err(io)?;
            let mut crc = 0u32;
            let mut size = 0u64;
            while let Some(chunk) = response.chunk().await? {
                crc = crc32c::crc32c_append(crc, &chunk);
                size += chunk.len() as u64;
                file.write_all(&chunk).await.map_err(io)?;
            }
            file.flush().await.map_err(io)?;
            if crc != object.crc32c || size != object.size {
                return Err(RequestError::Pipeline(Box::new(PipelineError::BadFile {
                    uri: object.name.clone(),
                    reason: format!(
                        "download does not match its metadata ({size} bytes, crc32c {crc:08x}; expected {} bytes, {:08x})",
                        object.size, object.crc32c
                    ),
                })));
            }
            Ok(())
        })
        .await
    }

    /// Uploads a local file as `name`; GCS verifies the content against `crc32c`.
    pub async fn upload(
        &self,
        bucket: &str,
        name: &str,
        source: &Path,
        crc32c: u32,
    ) -> Result<ObjectMeta, RequestError> {
        let io = |e| RequestError::Pipeline(Box::new(PipelineError::io(source, e)));
        let size = tokio::fs::metadata(source).await.map_err(io)?.len();
        let resource = if size <= SIMPLE_UPLOAD_LIMIT {
            let body = tokio::fs::read(source).await.map_err(io)?;
            self.upload_simple(bucket, name, body).await?
        } else {
            self.upload_resumable(bucket, name, source, size, crc32c)
                .await?
        };
        let meta = resource.into_meta()?;
        if meta.crc32c != crc32c || meta.size != size {
            return Err(RequestError::Pipeline(Box::new(PipelineError::BadFile {
                uri: name.to_string(),
                reason: "the uploaded object does not match the local file".into(),
            })));
        }
        Ok(meta)
    }

    async fn upload_simple(
        &self,
        bucket: &str,
        name: &str,
        body: Vec<u8>,
    ) -> Result<ObjectResource, RequestError> {
        let url = format!(
            "{}/upload/storage/v1/b/{}/o",
            self.endpoint,
            encode_name(bucket)
        );
        with_retries(TRIES, || async {
            let response = self
                .send(
                    self.http
                        .post(&url)
                        .query(&[("uploadType", "media"), ("name", name)])
                        .header("content-type", "application/octet-stream")
                        .body(body.clone()),
                )
                .await?;
            Ok(response.json().await?)
        })
        .await
    }

    /// The resumable protocol: open a session (declaring size and crc32c), then send
    /// chunks; after a failed chunk ask the session what it holds and go on from there.
    async fn upload_resumable(
        &self,
        bucket: &str,
        name: &str,
        source: &Path,
        size: u64,
        crc32c: u32,
    ) -> Result<ObjectResource, RequestError> {
        let url = format!(
            "{}/upload/storage/v1/b/{}/o",
            self.endpoint,
            encode_name(bucket)
        );
        let metadata = serde_json::json!({ "name": name, "crc32c": crc32c_to_base64(crc32c) });
        let session = with_retries(TRIES, || async {
            let response = self
                .send(
                    self.http
                        .post(&url)
                        .query(&[("uploadType", "resumable")])
                        .header("x-upload-content-length", size.to_string())
                        .header("x-upload-content-type", "application/octet-stream")
                        .json(&metadata),
                )
                .await?;
            response
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .ok_or_else(|| {
                    HttpError {
                        status: response.status().as_u16(),
                        body: "resumable upload started without a session URI".into(),
                    }
                    .into()
                })
        })
        .await?;

        let io = |e| RequestError::Pipeline(Box::new(PipelineError::io(source, e)));
        let mut file = tokio::fs::File::open(source).await.map_err(io)?;
        let mut offset = 0u64;
        let mut failures = 0u32;
        let mut buf = vec![0u8; UPLOAD_CHUNK];
        loop {
            use tokio::io::AsyncSeekExt;
            file.seek(std::io::SeekFrom::Start(offset))
                .await
                .map_err(io)?;
            let mut filled = 0;
            while filled < buf.len() {
                let n = file.read(&mut buf[filled..]).await.map_err(io)?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            let end = offset + filled as u64;
            let range = if filled == 0 {
                format!("bytes */{size}")
            } else {
                format!("bytes {offset}-{}/{size}", end - 1)
            };
            let token = self.credentials.token().await.map_err(Box::new)?;
            let sent = self
                .http
                .put(&session)
                .bearer_auth(token)
                .header("content-range", range)
                .body(buf[..filled].to_vec())
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => return Ok(r.json().await?),
                Ok(r) if r.status().as_u16() == 308 => {
                    let persisted = persisted_end(&r).unwrap_or(0);
                    if persisted > offset {
                        failures = 0;
                    } else {
                        // The chunk was not taken: retry it, but not forever.
                        failures += 1;
                        if failures >= TRIES {
                            return Err(HttpError {
                                status: 308,
                                body: format!("the upload session keeps no bytes past {persisted}"),
                            }
                            .into());
                        }
                    }
                    offset = persisted;
                }
                Ok(r) => {
                    let error = HttpError::from_response(r).await;
                    if !error.is_transient() || failures + 1 >= TRIES {
                        return Err(error.into());
                    }
                    failures += 1;
                    offset = self.session_offset(&session, size).await?;
                }
                Err(e) => {
                    if failures + 1 >= TRIES {
                        return Err(e.into());
                    }
                    failures += 1;
                    offset = self.session_offset(&session, size).await?;
                }
            }
        }
    }

    /// How many bytes a resumable session holds.
    async fn session_offset(&self, session: &str, size: u64) -> Result<u64, RequestError> {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let token = self.credentials.token().await.map_err(Box::new)?;
        let response = self
            .http
            .put(session)
            .bearer_auth(token)
            .header("content-range", format!("bytes */{size}"))
            .send()
            .await?;
        if response.status().as_u16() == 308 {
            Ok(persisted_end(&response).unwrap_or(0))
        } else if response.status().is_success() {
            Ok(size)
        } else {
            Err(HttpError::from_response(response).await.into())
        }
    }
}

/// The end of the persisted range of a 308 answer (`Range: bytes=0-N` -> N+1).
fn persisted_end(response: &reqwest::Response) -> Option<u64> {
    let range = response.headers().get("range")?.to_str().ok()?;
    let last: u64 = range.rsplit('-').next()?.parse().ok()?;
    Some(last + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_round_trips_through_gcs_base64() {
        // "hello" as GCS reports it.
        assert_eq!(
            crc32c_from_base64("mnG7TA=="),
            Some(crc32c::crc32c(b"hello"))
        );
        assert_eq!(crc32c_to_base64(crc32c::crc32c(b"hello")), "mnG7TA==");
        assert_eq!(crc32c_from_base64("not base64"), None);
    }

    #[test]
    fn object_names_are_path_encoded() {
        assert_eq!(encode_name("a/b c_2024.parquet"), "a%2Fb%20c_2024.parquet");
    }
}
