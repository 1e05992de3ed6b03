//! `controlplane` binary (being written).

fn main() {}
