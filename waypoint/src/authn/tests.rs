//! Tests for `authn`.
