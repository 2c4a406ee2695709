//! The local API: HTTP/1.1 + JSON on a Unix socket, versioned under `/v1/`.
//!
//! The socket is the access control: mode 0660, group `clinic-relay` (the
//! systemd unit's RuntimeDirectory); each connection's peer uid (and its
//! user name) is the audit actor.
//! Bodies are capped; errors are RFC 9457 problem+json. Reference: docs/api.md.

pub mod client;
pub(crate) mod conversations;
pub(crate) mod dead_letters;
mod download;
pub mod fhir;
pub mod health;
pub(crate) mod kpis;
pub mod limits;
pub(crate) mod patients;
mod problem;
pub mod read_audit;
pub(crate) mod routes;

pub use limits::ApiLimits;
pub use problem::Problem;
pub use routes::{ApiBody, ApiState, Door, HealthSources};

use crate::admission::{self, Noise, Slots, Throttle};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tracing::{debug, warn};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("api.socket {path}: {source}")]
    Bind {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("api.socket {0} is in use by a running process; is another clinic-relay running?")]
    InUse(std::path::PathBuf),
}

/// Binds the socket, replacing a stale socket file left by a crash (but not
/// one a live process still answers on), and sets mode 0660.
pub fn bind(path: &Path) -> Result<UnixListener, ApiError> {
    let bind_err = |source| ApiError::Bind {
        path: path.to_owned(),
        source,
    };
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ApiError::InUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(bind_err)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(bind_err)?;
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)) {
        // The file is ours (just bound): a failed start leaves nothing behind.
        drop(listener);
        let _ = std::fs::remove_file(path);
        return Err(bind_err(e));
    }
    Ok(listener)
}

/// Serves the API on the Unix socket until `stop` turns true, then lets
/// open requests finish.
pub async fn serve(listener: UnixListener, state: Arc<ApiState>, mut stop: watch::Receiver<bool>) {
    let mut connections = tokio::task::JoinSet::new();
    let slots = Slots::new(state.limits.max_connections, true);
    let noisy = Noise::new("api.max_connections");
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((s, _)) => s,
                    Err(e) => { noisy.accept_failed("API", &e).await; continue; }
                };
                let Some(slot) = noisy.admit(&slots, "API") else { continue };
                let cred = stream.peer_cred().ok();
                debug!(peer_uid = ?cred.map(|c| c.uid()), peer_pid = ?cred.and_then(|c| c.pid()), "API connection");
                let (state, stop) = (state.clone(), stop.clone());
                connections.spawn(async move {
                    let actor = unix_actor(cred.map(|c| c.uid()));
                    serve_connection(stream, actor, Door::Unix, state, stop, slot).await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    while connections.join_next().await.is_some() {}
}

/// The audit actor of a client on the Unix socket: the uid from
/// `SO_PEERCRED` (given by the kernel, the client cannot choose it) and the
/// user's name in `/etc/passwd` at connect time, e.g. `api:uid=1001(pmsbridge)`;
/// just `api:uid=1001` when `/etc/passwd` does not name it (a directory user)
/// or the name has unexpected characters. Not the peer's pid or `comm`: the
/// pid says nothing once the process is gone, `comm` is whatever the client
/// sets, and the unit's `ProtectProc=invisible` hides other users' `/proc`
/// entries anyway. The pid is in the debug log line of the connection.
fn unix_actor(uid: Option<u32>) -> String {
    let Some(uid) = uid else {
        return "api:uid=?".to_owned();
    };
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    match user_name(&passwd, uid) {
        Some(name) => format!("api:uid={uid}({name})"),
        None => format!("api:uid={uid}"),
    }
}

/// The name on the first `/etc/passwd` line with this uid (as getpwuid),
/// if it is a plain user name.
fn user_name(passwd: &str, uid: u32) -> Option<&str> {
    let name = passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        (fields.nth(1)?.parse::<u32>().ok()? == uid).then_some(name)
    })?;
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"._-$".contains(&b);
    (!name.is_empty() && name.len() <= 64 && name.bytes().all(plain)).then_some(name)
}

/// The API's optional TCP door: TLS with a client certificate from the
/// configured CA, or no connection at all. A slot is taken before the
/// handshake, which must finish within `api.header_timeout`.
pub async fn serve_tcp(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    state: Arc<ApiState>,
    mut stop: watch::Receiver<bool>,
) {
    let mut connections = tokio::task::JoinSet::new();
    let slots = Slots::new(state.limits.max_connections, true);
    let noisy = Noise::new("api.max_connections");
    let handshake_failed = Arc::new(Throttle::new(admission::LOG_EVERY));
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => { noisy.accept_failed("API TCP", &e).await; continue; }
                };
                let Some(mut slot) = noisy.admit(&slots, "API TCP") else { continue };
                let (acceptor, state, stop, handshake_failed) = (acceptor.clone(), state.clone(), stop.clone(), handshake_failed.clone());
                connections.spawn(async move {
                    let handshake = tokio::select! {
                        h = tokio::time::timeout(state.limits.header_timeout, acceptor.accept(tcp)) => h,
                        () = slot.evicted() => return,
                    };
                    let tls = match handshake {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            if let Some(held) = handshake_failed.allow() {
                                warn!(peer = %peer.ip(), error = %e, repeated = held, "API TLS handshake refused");
                            }
                            return;
                        }
                        Err(_) => {
                            if let Some(held) = handshake_failed.allow() {
                                warn!(peer = %peer.ip(), repeated = held, "API TLS handshake timed out");
                            }
                            return;
                        }
                    };
                    let actor = format!("api:{}", crate::tls::peer_name(tls.get_ref().1));
                    debug!(peer = %peer.ip(), client = %crate::logging::clean(&actor), "API TLS connection");
                    serve_connection(tls, actor, Door::Tcp, state, stop, slot).await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    while connections.join_next().await.is_some() {}
}

async fn serve_connection<S>(
    stream: S,
    actor: String,
    door: Door,
    state: Arc<ApiState>,
    mut stop: watch::Receiver<bool>,
    mut slot: admission::Slot,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let actor: Arc<str> = actor.into();
    let limits = state.limits;
    let marker = slot.marker();
    let service = hyper::service::service_fn(move |req| {
        let state = state.clone();
        let actor = actor.clone();
        let marker = marker.clone();
        async move {
            // Busy while a request is answered: only then is the slot safe
            // from a newcomer. A connection evicted just before never starts
            // its request (the client may retry it).
            if !marker.busy() {
                let problem = Problem::unavailable("connection closed to make room; retry");
                return Ok(problem.into_response().map(ApiBody::Full));
            }
            let resp = routes::handle(&state, req, &actor, door).await;
            // A streamed body (a backup) is still being sent: the slot stays
            // busy until the next request or the header timeout.
            if matches!(resp.body(), ApiBody::Full(_)) {
                marker.idle();
            }
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let conn = http1::Builder::new()
        .keep_alive(true)
        .timer(hyper_util::rt::TokioTimer::new())
        // Runs from the connect (or the previous response) to the end of the
        // headers, so it also closes idle keep-alive connections.
        .header_read_timeout(limits.header_timeout)
        .max_header_size(limits::MAX_HEADER_BYTES)
        .max_buf_size(limits::MAX_HEADER_BYTES + 16 * 1024)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => { if let Err(e) = res { debug!(error = %e, "API connection ended"); } }
        // Closed at once: it holds no request (see `admission`), and a flood
        // must not leave evicted sockets open.
        () = slot.evicted() => {}
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::user_name;

    #[test]
    fn user_names_come_from_the_first_line_with_the_uid() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      +::::::\n\
                      clinic-relay:x:998:998::/var/lib/clinic-relay:/usr/sbin/nologin\n\
                      pmsbridge:x:1001:1001::/nonexistent:/usr/sbin/nologin\n\
                      toor:x:0:0::/root:/bin/sh\n\
                      bad(name:x:1002:1002::/:/bin/sh\n";
        assert_eq!(user_name(passwd, 0), Some("root"));
        assert_eq!(user_name(passwd, 998), Some("clinic-relay"));
        assert_eq!(user_name(passwd, 1001), Some("pmsbridge"));
        assert_eq!(
            user_name(passwd, 1002),
            None,
            "a name that could confuse the actor"
        );
        assert_eq!(user_name(passwd, 4242), None);
        assert_eq!(user_name("", 0), None);
    }
}
