//! A loopback HTTP proxy in front of an emulator that injects faults into chosen
//! requests: a 503 answer, a response body cut off halfway (a reset mid-download), or a
//! rewritten response body. One request per connection (`Connection: close`).

// Each test binary uses some of the faults.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

/// What the proxy does to one request.
#[derive(Clone)]
pub enum Fault {
    /// Forward it untouched.
    Pass,
    /// Answer 503 without forwarding it.
    Unavailable,
    /// Forward it; send back the response head and half of its body, then close.
    CutBodyHalfway,
    /// Forward it; replace `from` by `to` in the response body.
    Rewrite { from: String, to: String },
}

pub struct FaultyHttpProxy {
    pub endpoint: String,
    /// Requests a fault other than `Pass` was applied to.
    pub faulted: Arc<AtomicUsize>,
    /// Request lines seen (`GET /path`), in order.
    pub seen: Arc<std::sync::Mutex<Vec<String>>>,
}

impl FaultyHttpProxy {
    /// Proxies to `upstream` (`http://host:port`); `rule` picks the fault of each request
    /// from its method, its path and how many faults were applied so far.
    pub fn start(
        upstream: &str,
        rule: impl Fn(&str, &str, usize) -> Fault + Send + Sync + 'static,
    ) -> Self {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let faulted = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let rule = Arc::new(rule);
        let (f, s) = (faulted.clone(), seen.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                let (upstream, rule, f, s) = (upstream.clone(), rule.clone(), f.clone(), s.clone());
                thread::spawn(move || {
                    let _ = serve(client, &upstream, &*rule, &f, &s);
                });
            }
        });
        FaultyHttpProxy {
            endpoint,
            faulted,
            seen,
        }
    }
}

fn read_head(stream: &mut TcpStream) -> std::io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
            return Ok((head, buf[end + 4..].to_vec()));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The head with `Connection: close` in place of any connection header.
fn closing(head: &str) -> String {
    let mut lines: Vec<&str> = head
        .trim_end_matches("\r\n")
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .collect();
    lines.push("Connection: close");
    format!("{}\r\n\r\n", lines.join("\r\n"))
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A chunked body decoded.
fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = body.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&body[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("0").trim(), 16)
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = eol + 2;
        out.extend_from_slice(&body[start..(start + size).min(body.len())]);
        body = &body[(start + size + 2).min(body.len())..];
    }
    out
}

fn serve(
    mut client: TcpStream,
    upstream: &str,
    rule: &(dyn Fn(&str, &str, usize) -> Fault + Send + Sync),
    faulted: &AtomicUsize,
    seen: &std::sync::Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let (head, early_body) = read_head(&mut client)?;
    let request_line = head.split("\r\n").next().unwrap_or_default().to_string();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    seen.lock().expect("seen").push(format!("{method} {path}"));
    let fault = rule(&method, &path, faulted.load(Ordering::SeqCst));
    if !matches!(fault, Fault::Pass) {
        faulted.fetch_add(1, Ordering::SeqCst);
    }
    if let Fault::Unavailable = fault {
        let body =
            r#"{"error":{"code":503,"message":"injected: backend unavailable","errors":[]}}"#;
        write!(
            client,
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        return client.shutdown(Shutdown::Both);
    }
    let mut server = TcpStream::connect(upstream)?;
    server.write_all(closing(&head).as_bytes())?;
    server.write_all(&early_body)?;
    // The rest of the request body, whatever its framing, goes on as it comes.
    let (mut from_client, mut to_server) = (client.try_clone()?, server.try_clone()?);
    thread::spawn(move || {
        let _ = std::io::copy(&mut from_client, &mut to_server);
    });
    let mut response = Vec::new();
    server.read_to_end(&mut response)?;
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(response.len(), |e| e + 4);
    let (response_head, body) = response.split_at(end);
    let response_head = String::from_utf8_lossy(response_head).into_owned();
    match fault {
        Fault::CutBodyHalfway => {
            client.write_all(response_head.as_bytes())?;
            client.write_all(&body[..body.len() / 2])?;
        }
        Fault::Rewrite { from, to } => {
            let chunked = header(&response_head, "transfer-encoding")
                .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
            let body = if chunked {
                dechunk(body)
            } else {
                body.to_vec()
            };
            let text = String::from_utf8_lossy(&body).replace(&from, &to);
            let kept: Vec<&str> = response_head
                .trim_end_matches("\r\n")
                .split("\r\n")
                .filter(|l| {
                    let l = l.to_ascii_lowercase();
                    !l.starts_with("content-length:") && !l.starts_with("transfer-encoding:")
                })
                .collect();
            write!(
                client,
                "{}\r\nContent-Length: {}\r\n\r\n{text}",
                kept.join("\r\n"),
                text.len()
            )?;
        }
        Fault::Pass | Fault::Unavailable => client.write_all(&response)?,
    }
    client.flush()?;
    client.shutdown(Shutdown::Both)
}
