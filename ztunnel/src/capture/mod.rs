//! In-pod capture: the enrollment protocol with the node agent (ZDS) that tells this agent which
//! pods to serve and hands over their network namespaces.
//!
//! Today: the ZDS message rules and session state machine ([`zds`]), pure and tested against
//! upstream's wire vectors. The socket transport, the per-pod listeners and the node agent
//! come with the rest of in-pod mode (issue 4).

pub mod zds;
