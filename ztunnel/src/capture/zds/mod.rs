//! ZDS, the node agent → ztunnel protocol: one protobuf message per `SOCK_SEQPACKET` record,
//! the pod's network namespace passed as a file descriptor with each `add`.
//!
//! [`message`] turns a received record (bytes plus how many descriptors came with it) into a
//! [`Request`] or a [`ReadError`], and encodes what ztunnel sends. [`session`] is the state
//! machine of one connection: which pods the initial snapshot named, what to start and stop.
//!
//! Unlike upstream, which exits the process on a protocol violation, a violation here is
//! answered with an error ack and the connection is dropped and re-established: one confused or
//! hostile agent message must not take every other pod on the node down with the process.

pub mod message;
pub mod session;
pub mod transport;

pub use message::{
    PodInfo, ReadError, Request, decode_ack, decode_hello, decode_request, encode_ack,
    encode_hello, encode_request,
};
pub use session::{Action, NetnsId, ProtocolError, Session};
