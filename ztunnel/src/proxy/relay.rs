//! Copying bytes between the two legs of a proxied connection, both directions at once, with
//! half-close carried across: when one side finishes sending, the other leg is shut for
//! writing and the reverse direction keeps flowing until it finishes too.

use tokio::io::{AsyncRead, AsyncWrite};

/// Bytes each direction buffers. 64 KiB moves a TLS record's worth of plaintext (16 KiB) four
/// at a time, so a fast stream costs few wakeups, while keeping a connection's copy buffers at
/// 128 KiB: ten thousand idle-but-open connections stay near a gigabyte, not ten.
pub(crate) const RELAY_BUFFER: usize = 64 * 1024;

/// What crossed a finished relay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Transferred {
    /// From the downstream (accepted) side to the upstream side.
    pub sent: u64,
    /// From the upstream side back to the downstream side.
    pub received: u64,
}

/// Copies both ways until both directions have finished, or one fails.
pub(crate) async fn relay<D, U>(
    downstream: &mut D,
    upstream: &mut U,
) -> std::io::Result<Transferred>
where
    D: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (sent, received) =
        tokio::io::copy_bidirectional_with_sizes(downstream, upstream, RELAY_BUFFER, RELAY_BUFFER)
            .await?;
    Ok(Transferred { sent, received })
}
