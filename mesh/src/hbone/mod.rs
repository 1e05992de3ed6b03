//! HBONE: TCP connections carried as HTTP/2 CONNECT streams over mutual TLS.
//!
//! - [`server`] accepts an mTLS connection, serves HTTP/2 and hands each CONNECT stream to the
//!   caller, who decides (policy, upstream dial) and then accepts or rejects it.
//! - [`client`] opens CONNECT streams on an HTTP/2 connection; [`pool`] keeps few such
//!   connections per (source identity, destination identities, address) and multiplexes.
//! - [`H2Stream`] is one tunnel as a byte stream; [`headers`] the CONNECT metadata.
//!
//! Window sizes, frame size and keepalive follow upstream ztunnel, so one stream can fill a fast
//! link and a dead peer is noticed within half a minute.

pub mod client;
pub mod headers;
pub mod pool;
pub mod server;
mod stream;

use std::time::Duration;

pub use headers::{Authority, AuthorityError, Baggage};
pub use stream::H2Stream;

/// The port HBONE listens on.
pub const HBONE_PORT: u16 = 15008;

/// HTTP/2 parameters of one end. Defaults are upstream's (see the constants).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H2Settings {
    /// Per-stream receive window.
    pub stream_window: u32,
    /// Connection receive window.
    pub connection_window: u32,
    /// Largest DATA frame accepted.
    pub max_frame_size: u32,
    /// Largest header block accepted.
    pub max_header_list_size: u32,
    /// Most bytes queued for sending per stream before writes wait.
    pub max_send_buffer: usize,
    /// Interval between keepalive PINGs.
    pub keepalive_interval: Duration,
    /// A PING unanswered this long means the peer is gone.
    pub keepalive_timeout: Duration,
}

/// 4 MiB per stream: enough in flight for one stream to fill a multi-gigabit link at
/// data-centre round-trip times.
pub const DEFAULT_STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// 16 MiB per connection: four streams at full window before they share.
pub const DEFAULT_CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// 1 MiB frames: fewer frame headers and wakeups per byte.
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 1024 * 1024;
/// Keepalive PING interval, as upstream.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Keepalive timeout, as upstream.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

impl H2Settings {
    /// The originating side: header list up to 16 KiB, send buffer up to one window.
    pub fn client() -> Self {
        Self {
            stream_window: DEFAULT_STREAM_WINDOW,
            connection_window: DEFAULT_CONNECTION_WINDOW,
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            max_header_list_size: 16 * 1024,
            max_send_buffer: DEFAULT_STREAM_WINDOW as usize,
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
        }
    }

    /// The 15008 side: header list up to 64 KiB, send buffer 400 KiB per stream so one agent
    /// serving many streams keeps a bounded amount of unsent data per stream.
    pub fn server() -> Self {
        Self {
            max_header_list_size: 64 * 1024,
            max_send_buffer: 400 * 1024,
            ..Self::client()
        }
    }
}

/// Streams a server lets one client connection have open at once (advertised in SETTINGS).
pub const SERVER_MAX_CONCURRENT_STREAMS: u32 = 200;
