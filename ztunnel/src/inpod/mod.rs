//! In-pod mode (upstream's `PROXY_MODE=shared`): the node agent (istio-cni, or this project's
//! `ztunnel node-agent`) enrolls pods over ZDS and hands over their network namespaces; ztunnel
//! runs one proxy per pod, listening inside that pod's namespace on 15001, 15006 and 15008.
//!
//! [`client`] speaks ZDS and decides; [`pods`] owns the running pod proxies.

pub mod client;
pub mod pods;
