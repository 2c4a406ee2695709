//! The MLLP listener: accepts connections from the PMS, reads frames, hands
//! each to the handler and writes back its reply (the ACK), one message at a
//! time per connection as HL7 original mode requires.
//!
//! Limits: a global cap on open connections (extra ones are closed at once),
//! a frame size cap, an idle timeout, and an IP allow-list checked before a
//! single byte is read.

use super::mllp::{self, Incoming};
use ipnet::IpNet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info, warn};

/// What the listener does with a frame: returns the bytes to send back.
pub trait FrameHandler: Send + Sync + 'static {
    fn handle(&self, frame: Incoming, peer: SocketAddr) -> impl Future<Output = Vec<u8>> + Send;
}

#[derive(Debug, Clone)]
pub struct ListenerLimits {
    pub max_connections: usize,
    pub max_frame_bytes: usize,
    pub idle_timeout: Duration,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            max_frame_bytes: 16 * 1024 * 1024,
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// Which peers may connect. Empty means everyone.
#[derive(Debug, Clone, Default)]
pub struct AllowList(pub Vec<IpNet>);

impl AllowList {
    pub fn permits(&self, addr: &SocketAddr) -> bool {
        let ip = addr.ip().to_canonical();
        self.0.is_empty() || self.0.iter().any(|net| net.contains(&ip))
    }
}

/// Turns an accepted TCP stream into the stream frames are read from (the
/// identity for plain TCP, a TLS handshake for MLLP over TLS).
pub trait Upgrade: Send + Sync + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn upgrade(
        &self,
        tcp: tokio::net::TcpStream,
    ) -> impl Future<Output = std::io::Result<Self::Stream>> + Send;
}

pub struct PlainTcp;

impl Upgrade for PlainTcp {
    type Stream = tokio::net::TcpStream;
    async fn upgrade(&self, tcp: tokio::net::TcpStream) -> std::io::Result<Self::Stream> {
        Ok(tcp)
    }
}

/// MLLP over TLS: the handshake must finish within `timeout`.
pub struct TlsUpgrade {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub timeout: Duration,
}

impl Upgrade for TlsUpgrade {
    type Stream = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    async fn upgrade(&self, tcp: tokio::net::TcpStream) -> std::io::Result<Self::Stream> {
        tokio::time::timeout(self.timeout, self.acceptor.accept(tcp))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
            })?
    }
}

/// Serves until `stop` turns true; then stops accepting and lets each open
/// connection finish the message it is on.
pub async fn serve<H: FrameHandler, U: Upgrade>(
    listener: TcpListener,
    handler: Arc<H>,
    upgrade: Arc<U>,
    limits: ListenerLimits,
    allow: AllowList,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => { warn!(error = %e, "MLLP accept failed"); continue; }
                };
                if !allow.permits(&peer) {
                    warn!(peer = %peer.ip(), "MLLP connection refused: not in pms.allow");
                    continue;
                }
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    warn!(peer = %peer.ip(), limit = limits.max_connections, "MLLP connection refused: too many connections");
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let (handler, upgrade, limits, stop) = (handler.clone(), upgrade.clone(), limits.clone(), stop.clone());
                connections.spawn(async move {
                    let _permit = permit;
                    match upgrade.upgrade(tcp).await {
                        Ok(stream) => connection(stream, peer, handler, &limits, stop).await,
                        Err(e) => warn!(peer = %peer.ip(), error = %e, "MLLP TLS handshake failed"),
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    while connections.join_next().await.is_some() {}
}

async fn connection<S, H>(
    stream: S,
    peer: SocketAddr,
    handler: Arc<H>,
    limits: &ListenerLimits,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
    H: FrameHandler,
{
    debug!(peer = %peer.ip(), "MLLP connection open");
    let (read, mut write) = tokio::io::split(stream);
    let mut reader = BufReader::with_capacity(64 * 1024, read);
    loop {
        let next = tokio::select! {
            _ = stop.changed() => break,
            next = tokio::time::timeout(limits.idle_timeout, mllp::read_frame(&mut reader, limits.max_frame_bytes)) => next,
        };
        let frame = match next {
            Err(_) => {
                info!(peer = %peer.ip(), "MLLP connection idle too long; closing");
                break;
            }
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                debug!(peer = %peer.ip(), error = %e, "MLLP connection ended");
                break;
            }
            Ok(Ok(Some(frame))) => frame,
        };
        let reply = handler.handle(frame, peer).await;
        if let Err(e) = mllp::write_frame(&mut write, &reply).await {
            debug!(peer = %peer.ip(), error = %e, "MLLP reply not delivered");
            break;
        }
    }
}
