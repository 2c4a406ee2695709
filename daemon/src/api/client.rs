//! A minimal client for the local API, used by `clinic-relay status` and
//! `backup create` to ask the running daemon.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no clinic-relay daemon answers on {0}")]
    NotRunning(std::path::PathBuf),
    #[error("talking to the daemon: {0}")]
    Http(String),
    #[error("writing what the daemon sent: {0}")]
    Write(std::io::Error),
}

/// What [`download`] got.
#[derive(Debug)]
pub enum Download {
    /// 200: this many bytes were written.
    Saved(u64),
    /// Another status, and (the head of) the body that explains it.
    Refused(u16, Bytes),
}

/// One request over the Unix socket; returns status and body.
pub async fn request(socket: &Path, method: &str, path: &str) -> Result<(u16, Bytes), ClientError> {
    let resp = send(socket, method, path).await?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?
        .to_bytes();
    Ok((status, body))
}

/// A GET whose 200 body is streamed into `out` as it arrives (a backup),
/// never held whole in memory. A transfer cut short is an error.
pub async fn download(
    socket: &Path,
    path: &str,
    out: &mut impl std::io::Write,
) -> Result<Download, ClientError> {
    let resp = send(socket, "GET", path).await?;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    if status != 200 {
        let text = http_body_util::Limited::new(body, 64 * 1024)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return Ok(Download::Refused(status, text));
    }
    let mut written = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ClientError::Http(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            out.write_all(&data).map_err(ClientError::Write)?;
            written += data.len() as u64;
        }
    }
    Ok(Download::Saved(written))
}

/// Runs [`download`] on a small runtime of its own (for the CLI).
pub fn download_blocking(
    socket: &Path,
    path: &str,
    out: &mut impl std::io::Write,
) -> Result<Download, ClientError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClientError::Http(e.to_string()))?;
    rt.block_on(download(socket, path, out))
}

/// Runs `request` on a small runtime of its own (for the CLI).
pub fn request_blocking(
    socket: &Path,
    method: &str,
    path: &str,
) -> Result<(u16, Bytes), ClientError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClientError::Http(e.to_string()))?;
    rt.block_on(request(socket, method, path))
}

/// Sends a request without a body over the socket and returns the response head.
async fn send(
    socket: &Path,
    method: &str,
    path: &str,
) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|_| ClientError::NotRunning(socket.to_owned()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?;
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .map_err(|e| ClientError::Http(e.to_string()))?;
    sender
        .send_request(req)
        .await
        .map_err(|e| ClientError::Http(e.to_string()))
}
