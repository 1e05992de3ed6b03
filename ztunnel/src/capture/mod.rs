//! In-pod capture: the enrollment protocol with the node agent (ZDS) that tells this agent which
//! pods to serve and hands over their network namespaces, and the capture rules a standalone
//! node agent installs inside each pod's namespace.

pub mod netns;
pub mod rules;
pub mod zds;
