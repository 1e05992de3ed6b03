//! The waypoint: an L7 proxy for the traffic that needs it. It terminates HBONE from client
//! ztunnels ([`proxy`]), serves each tunnelled stream as HTTP/1.1 or HTTP/2 ([`sniff`]; anything
//! else as TCP with L4 rules only), authenticates JWTs ([`authn`]), authorizes each request with
//! `mesh::policy` ([`policies`], [`request`]), and forwards it over HBONE to one of the
//! destination service's endpoints ([`upstream`]).

pub mod authn;
pub mod config;
pub mod metrics;
pub mod path;
pub mod policies;
pub mod proxy;
pub mod request;
pub mod sniff;
pub mod traces;
pub mod upstream;
