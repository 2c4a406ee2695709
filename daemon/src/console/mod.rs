//! The staff console (issue 12, first slice): a small web app on the LAN,
//! over TLS (plain HTTP only on loopback), for front-desk staff to answer
//! the conversations the bot handed over. Staff accounts with Argon2id
//! passwords and TOTP (`staff`), sessions in memory written through to
//! the vault (`session`, `session_store`), the pages
//! (`pages`), the routes (`routes`). Its data path is the inbox API's
//! library calls (`api::conversations`): same reads, same audit entries
//! (actor `staff:NAME`), same commands through `commands::apply`.

pub mod cert;
mod charts;
pub mod cli;
pub mod config;
mod dashboard;
mod http;
mod live;
mod lookup;
pub mod pages;
mod routes;
pub mod session;
mod session_store;
pub mod staff;
mod words;

use crate::admission::{self, Noise, Slots, Throttle};
use crate::api::ApiState;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{debug, warn};

/// Connections at once (a clinic has a handful of desks; browsers open up
/// to six each).
const MAX_CONNECTIONS: usize = 128;
/// Time for the TLS handshake and for each request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

pub struct ConsoleState {
    /// The inbox API's state: vault, clock, read auditor (one data path).
    pub api: Arc<ApiState>,
    pub sessions: Arc<session::Sessions>,
    pub throttle: session::LoginThrottle,
    /// Served over TLS (cookies `Secure`, HSTS).
    pub tls: bool,
    /// The daemon's stop: ends the live-update streams.
    pub stop: watch::Receiver<bool>,
}

impl ConsoleState {
    pub fn new(
        api: Arc<ApiState>,
        config: &config::ConsoleConfig,
        sessions: Arc<session::Sessions>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Self {
            api,
            sessions,
            throttle: session::LoginThrottle::default(),
            tls: !config.plain_http,
            stop,
        }
    }
}

/// Serves the console until `stop` turns true, then lets open requests
/// finish. `acceptor` is None only for plain HTTP on loopback (config
/// validation refuses it elsewhere).
pub async fn serve(
    listener: tokio::net::TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<ConsoleState>,
    mut stop: watch::Receiver<bool>,
) {
    let mut connections = tokio::task::JoinSet::new();
    let slots = Slots::new(MAX_CONNECTIONS, true);
    let noisy = Noise::new("console connections");
    let handshake_failed = Arc::new(Throttle::new(admission::LOG_EVERY));
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => { noisy.accept_failed("console", &e).await; continue; }
                };
                let Some(mut slot) = noisy.admit(&slots, "console") else { continue };
                let (acceptor, state, stop, handshake_failed) =
                    (acceptor.clone(), state.clone(), stop.clone(), handshake_failed.clone());
                connections.spawn(async move {
                    let Some(acceptor) = acceptor else {
                        serve_connection(tcp, peer.ip(), state, stop, slot).await;
                        return;
                    };
                    let handshake = tokio::select! {
                        h = tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(tcp)) => h,
                        () = slot.evicted() => return,
                    };
                    match handshake {
                        Ok(Ok(tls)) => serve_connection(tls, peer.ip(), state, stop, slot).await,
                        Ok(Err(e)) => {
                            if let Some(held) = handshake_failed.allow() {
                                warn!(peer = %peer.ip(), error = %e, repeated = held, "console TLS handshake refused");
                            }
                        }
                        Err(_) => {
                            if let Some(held) = handshake_failed.allow() {
                                warn!(peer = %peer.ip(), repeated = held, "console TLS handshake timed out");
                            }
                        }
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    while connections.join_next().await.is_some() {}
}

async fn serve_connection<S>(
    stream: S,
    peer: IpAddr,
    state: Arc<ConsoleState>,
    mut stop: watch::Receiver<bool>,
    mut slot: admission::Slot,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let marker = slot.marker();
    let service = hyper::service::service_fn(move |req| {
        let state = state.clone();
        let marker = marker.clone();
        async move {
            if !marker.busy() {
                let r = http::text(
                    hyper::StatusCode::SERVICE_UNAVAILABLE,
                    "connection closed to make room; retry\n",
                );
                return Ok(http::secure(r, state.tls, true));
            }
            let resp = routes::handle(&state, req, peer).await;
            marker.idle();
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let conn = http1::Builder::new()
        .keep_alive(true)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(http::MAX_HEADERS.max(8192))
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => { if let Err(e) = res { debug!(error = %e, "console connection ended"); } }
        () = slot.evicted() => {}
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
