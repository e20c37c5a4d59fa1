//! A fault-injecting HTTP/1.1 proxy for the fault tests: it sits between
//! Lethe and a real server (moto), forwards each request on its own upstream
//! connection, and lets a rule delay a request or answer it with an error
//! instead. One request per client connection (`Connection: close`), which
//! every HTTP client handles.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy saw of a request.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// Lower-cased header names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// S3 UploadPart: `PUT …?partNumber=N&uploadId=…`.
    pub fn is_upload_part(&self) -> bool {
        self.method == "PUT" && self.target.contains("partNumber=")
    }

    /// The S3 operation of a request on a bucket (path-style), by method and
    /// query: the listings and deletes a purge makes, else `other`.
    pub fn s3_op(&self) -> &'static str {
        let query = self.target.split_once('?').map_or("", |(_, q)| q);
        let has = |name: &str| {
            query
                .split('&')
                .any(|p| p == name || p.starts_with(&format!("{name}=")))
        };
        let path = self.target.split('?').next().unwrap_or_default();
        let on_bucket = path.trim_matches('/').split('/').count() == 1;
        match self.method.as_str() {
            "GET" if on_bucket && has("versions") => "ListObjectVersions",
            "GET" if on_bucket && has("list-type") => "ListObjectsV2",
            "GET" if on_bucket && !has("uploads") && !has("versioning") => "ListObjects",
            "POST" if on_bucket && has("delete") => "DeleteObjects",
            _ => "other",
        }
    }

    /// A query parameter's value, percent-decoded.
    pub fn query(&self, name: &str) -> Option<String> {
        let query = self.target.split_once('?')?.1;
        query.split('&').find_map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k == name).then(|| {
                url::form_urlencoded::parse(format!("v={v}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            })
        })
    }

    /// The KMS operation from `X-Amz-Target: TrentService.Op`.
    pub fn kms_op(&self) -> Option<&str> {
        self.header("x-amz-target")
            .and_then(|t| t.strip_prefix("TrentService."))
    }
}

pub enum Fault {
    Pass,
    /// Wait, then forward.
    Delay(Duration),
    /// Answer with this status, content type and body; the server never sees it.
    Respond(u16, &'static str, String),
}

pub type Rule = Box<dyn Fn(&Request) -> Fault + Send + Sync>;

pub struct FaultProxy {
    pub url: String,
    /// Requests seen, in order.
    pub seen: Arc<Mutex<Vec<Request>>>,
    pub injected: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    /// Listens on a free 127.0.0.1 port and forwards to `upstream` (`http://host:port`).
    pub async fn start(upstream: &str, rule: Rule) -> FaultProxy {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let injected = Arc::new(AtomicUsize::new(0));
        let rule = Arc::new(rule);
        let (seen2, injected2) = (seen.clone(), injected.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (upstream, rule, seen, injected) = (
                    upstream.clone(),
                    rule.clone(),
                    seen2.clone(),
                    injected2.clone(),
                );
                tokio::spawn(async move {
                    let _ = serve(client, &upstream, &rule, &seen, &injected).await;
                });
            }
        });
        FaultProxy {
            url,
            seen,
            injected,
            task,
        }
    }

    pub fn count(&self, pred: impl Fn(&Request) -> bool) -> usize {
        self.seen.lock().unwrap().iter().filter(|r| pred(r)).count()
    }

    /// Requests seen of one S3 operation (see [`Request::s3_op`]).
    pub fn count_op(&self, op: &str) -> usize {
        self.count(|r| r.s3_op() == op)
    }

    /// Forgets the requests seen so far (counts start again).
    pub fn reset(&self) {
        self.seen.lock().unwrap().clear();
    }
}

async fn serve(
    client: TcpStream,
    upstream: &str,
    rule: &Rule,
    seen: &Mutex<Vec<Request>>,
    injected: &AtomicUsize,
) -> std::io::Result<()> {
    let mut client = BufReader::new(client);
    let mut head = String::new();
    let mut line = String::new();
    client.read_line(&mut line).await?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    head.push_str(&line);
    let mut headers = Vec::new();
    loop {
        line.clear();
        if client.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        if line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.trim_end().split_once(':') {
            let k = k.trim().to_ascii_lowercase();
            headers.push((k.clone(), v.trim().to_string()));
            // We ask the upstream to close after its answer, and handle 100-continue ourselves.
            if k == "connection" || k == "expect" {
                continue;
            }
        }
        head.push_str(&line);
    }
    head.push_str("Connection: close\r\n\r\n");
    let mut req = Request {
        method,
        target,
        headers,
        body: Vec::new(),
    };
    if req
        .header("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        client
            .get_mut()
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await?;
    }
    let body = read_body(&mut client, &req).await?;
    req.body = body.clone();
    seen.lock().unwrap().push(Request {
        body: Vec::new(), // bodies can be parts of megabytes: not kept
        ..req.clone()
    });
    let mut client = client.into_inner();
    match rule(&req) {
        Fault::Pass => {}
        Fault::Delay(d) => tokio::time::sleep(d).await,
        Fault::Respond(status, ctype, text) => {
            injected.fetch_add(1, Ordering::SeqCst);
            let resp = format!(
                "HTTP/1.1 {status} Injected\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                text.len()
            );
            client.write_all(resp.as_bytes()).await?;
            return client.shutdown().await;
        }
    }
    let mut up = TcpStream::connect(upstream).await?;
    up.write_all(head.as_bytes()).await?;
    up.write_all(&body).await?;
    // The upstream closes after its response (we asked for it): relay until EOF.
    tokio::io::copy(&mut up, &mut client).await?;
    client.shutdown().await
}

/// The request body, re-encoded as it came (Content-Length or chunked).
async fn read_body(client: &mut BufReader<TcpStream>, req: &Request) -> std::io::Result<Vec<u8>> {
    if let Some(n) = req
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        let mut body = vec![0; n];
        client.read_exact(&mut body).await?;
        return Ok(body);
    }
    if req
        .header("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        let mut body = Vec::new();
        loop {
            let mut size = String::new();
            client.read_line(&mut size).await?;
            body.extend_from_slice(size.as_bytes());
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            if n == 0 {
                // Trailers, up to the blank line.
                loop {
                    let mut t = String::new();
                    client.read_line(&mut t).await?;
                    body.extend_from_slice(t.as_bytes());
                    if t == "\r\n" || t.is_empty() {
                        return Ok(body);
                    }
                }
            }
            let mut chunk = vec![0; n + 2];
            client.read_exact(&mut chunk).await?;
            body.extend_from_slice(&chunk);
        }
    }
    Ok(Vec::new())
}

/// S3's error document.
pub fn s3_error(code: &str) -> String {
    format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected by the fault proxy</Message><RequestId>fault</RequestId></Error>")
}
