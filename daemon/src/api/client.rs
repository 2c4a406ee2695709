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
}

/// One request over the Unix socket; returns status and body.
pub async fn request(socket: &Path, method: &str, path: &str) -> Result<(u16, Bytes), ClientError> {
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
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?
        .to_bytes();
    Ok((status, body))
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
