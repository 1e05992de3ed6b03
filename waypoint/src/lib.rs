//! The waypoint: an L7 proxy for the traffic that needs it. It terminates HBONE from client
//! ztunnels, serves each tunnelled stream as HTTP/1.1 or HTTP/2 (anything else as TCP with L4
//! rules only), authenticates JWTs, authorizes each request with `mesh::policy`, and forwards it
//! over HBONE to one of the destination service's endpoints.

pub mod authn;
