//! Tests of reading and validating YAML: what is read (`parse`), and that every refusal names
//! its file, document, object and field (`refusals`).

#![allow(clippy::unwrap_used)]

mod files;
mod parse;
mod refusals;

use std::path::PathBuf;

use super::{Cluster, LoadError};

/// The shared conformance world: every kind this module reads, as a real cluster would hold it.
fn world_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance/authz/world.yaml")
}

fn parse(text: &str) -> Result<Cluster, LoadError> {
    Cluster::parse("t.yaml", text)
}

/// The message of the error `text` fails with.
fn refusal(text: &str) -> String {
    match parse(text) {
        Ok(cluster) => panic!("accepted: {cluster:?}"),
        Err(error) => error.to_string(),
    }
}
