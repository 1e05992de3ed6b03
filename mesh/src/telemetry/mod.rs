//! What both proxies show operators: logs ([`logging`]: upstream's line format, a filter that
//! changes at run time), metrics ([`metrics`]: exposition, build and process families) and the
//! small HTTP servers they are read through ([`http`]), and the client that reads them
//! ([`scrape`]). Each proxy owns its own metric families and admin endpoints; this module only
//! has what they share.

pub mod http;
pub mod logging;
pub mod metrics;
pub mod scrape;
