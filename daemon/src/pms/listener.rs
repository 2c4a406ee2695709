//! The MLLP listener: accepts connections from the PMS, reads frames, hands
//! each to the handler and writes back its reply (the ACK), one message at a
//! time per connection as HL7 original mode requires.
//!
//! Limits: a global cap on open connections, a frame size cap, a time
//! allowed for the first frame and an idle timeout after it, and an IP
//! allow-list checked before a single byte is read. At the cap, a new
//! connection takes the slot of the oldest one that has not sent a frame
//! yet ([`crate::admission`]): sockets opened and left idle cannot lock the
//! PMS out (issue 8). Repeated warnings are written once per interval.

use super::mllp::{self, Incoming};
use crate::admission::{self, Admitted, Slot, Slots, Throttle};
use ipnet::IpNet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::net::TcpListener;
use tokio::sync::watch;
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
    /// From the accept (or the TLS handshake) to the first complete frame.
    pub first_frame_timeout: Duration,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            max_frame_bytes: 16 * 1024 * 1024,
            idle_timeout: Duration::from_secs(300),
            first_frame_timeout: Duration::from_secs(30),
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

/// The warnings a flood could repeat, each written once per interval.
struct Noise {
    accept: Throttle,
    refused: Throttle,
    full: Throttle,
    handshake: Throttle,
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
    // A PMS that has sent a frame keeps its connection: only fresh ones
    // are evicted.
    let slots = Slots::new(limits.max_connections, false);
    let noise = Arc::new(Noise {
        accept: Throttle::new(admission::LOG_EVERY),
        refused: Throttle::new(admission::LOG_EVERY),
        full: Throttle::new(admission::LOG_EVERY),
        handshake: Throttle::new(admission::LOG_EVERY),
    });
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        if let Some(held) = noise.accept.allow() {
                            warn!(error = %e, repeated = held, "MLLP accept failed; retrying");
                        }
                        // Out of descriptors, accept fails again at once.
                        tokio::time::sleep(admission::ACCEPT_BACKOFF).await;
                        continue;
                    }
                };
                if !allow.permits(&peer) {
                    if let Some(held) = noise.refused.allow() {
                        warn!(peer = %peer.ip(), repeated = held, "MLLP connection refused: not in pms.allow");
                    }
                    continue;
                }
                let mut slot = match slots.admit() {
                    Some((slot, Admitted::Free)) => slot,
                    Some((slot, Admitted::Evicted)) => {
                        debug!(peer = %peer.ip(), "MLLP connection slots full; the oldest connection without a frame was closed");
                        slot
                    }
                    None => {
                        if let Some(held) = noise.full.allow() {
                            warn!(peer = %peer.ip(), limit = limits.max_connections, repeated = held, "MLLP connection refused: every connection has sent messages (pms.max_connections)");
                        }
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let (handler, upgrade, limits, stop, noise) = (handler.clone(), upgrade.clone(), limits.clone(), stop.clone(), noise.clone());
                connections.spawn(async move {
                    let upgraded = tokio::select! {
                        u = upgrade.upgrade(tcp) => u,
                        () = slot.evicted() => return,
                    };
                    match upgraded {
                        Ok(stream) => connection(stream, peer, handler, &limits, stop, slot).await,
                        Err(e) => {
                            if let Some(held) = noise.handshake.allow() {
                                warn!(peer = %peer.ip(), error = %e, repeated = held, "MLLP TLS handshake failed");
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

async fn connection<S, H>(
    stream: S,
    peer: SocketAddr,
    handler: Arc<H>,
    limits: &ListenerLimits,
    mut stop: watch::Receiver<bool>,
    mut slot: Slot,
) where
    S: AsyncRead + AsyncWrite + Unpin,
    H: FrameHandler,
{
    debug!(peer = %peer.ip(), "MLLP connection open");
    let (read, mut write) = tokio::io::split(stream);
    let mut reader = BufReader::with_capacity(64 * 1024, read);
    let mut first = true;
    loop {
        let wait = if first {
            limits.first_frame_timeout
        } else {
            limits.idle_timeout
        };
        let next = tokio::select! {
            _ = stop.changed() => break,
            () = slot.evicted(), if first => {
                debug!(peer = %peer.ip(), "MLLP connection without a frame closed to make room");
                break;
            }
            next = tokio::time::timeout(wait, mllp::read_frame(&mut reader, limits.max_frame_bytes)) => next,
        };
        let frame = match next {
            Err(_) if first => {
                debug!(peer = %peer.ip(), "MLLP connection sent no frame in time (pms.first_frame_timeout); closing");
                break;
            }
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
        if first {
            // Evicted in the meantime: the frame is not handled (no ACK, so
            // the sender sends it again).
            if !slot.busy() {
                break;
            }
            first = false;
        }
        let reply = handler.handle(frame, peer).await;
        if let Err(e) = mllp::write_frame(&mut write, &reply).await {
            debug!(peer = %peer.ip(), error = %e, "MLLP reply not delivered");
            break;
        }
    }
}
