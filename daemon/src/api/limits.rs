//! The local API's connection limits (config `[api]`): how many connections
//! each door holds, how long a client may take to send its headers and its
//! body. Issue 8: without them idle sockets, slow headers, never-ending
//! bodies and short bodies all stayed open for ever, and 1,030 of them ran
//! the daemon out of file descriptors.

use std::time::Duration;

/// The most header bytes (request line included) a request may have;
/// more is answered `431` (docs/api.md).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiLimits {
    /// Per door (the Unix socket and the TCP door each have this many).
    pub max_connections: usize,
    /// From connecting (or the end of the previous response) to the end of
    /// the request's headers; on the TCP door also the TLS handshake.
    pub header_timeout: Duration,
    /// From the end of the headers to the end of the body.
    pub body_timeout: Duration,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
        }
    }
}

/// The allowed range of `api.max_connections`.
pub const MAX_CONNECTIONS_RANGE: (u32, u32) = (1, 1024);
/// The allowed range of both timeouts.
pub const TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(600));

pub use super::download::Downloads;
