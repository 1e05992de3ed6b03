//! Finding the token in the request head, and the head edits an accepted token makes.

use http::header::{HeaderMap, HeaderValue};
use http::request::Parts;
use http::uri::{PathAndQuery, Uri};
use serde_json::Value;
use tracing::debug;

use super::rules::{Location, Rule};
use super::token::Jwt;

/// A token and the place it was found.
#[derive(Debug)]
pub(crate) struct Found<'r> {
    pub(crate) location: &'r Location,
    pub(crate) token: String,
}

/// The first location (in the order given) holding a non-empty token.
pub(crate) fn find<'r>(locations: &'r [Location], head: &Parts) -> Option<Found<'r>> {
    locations
        .iter()
        .find_map(|location| token_at(location, head).map(|token| Found { location, token }))
}

fn token_at(location: &Location, head: &Parts) -> Option<String> {
    match location {
        Location::Header { name, prefix } => head
            .headers
            .get_all(name)
            .iter()
            .find_map(|value| after_prefix(value, prefix)),
        Location::Param(name) => query_pairs(head.uri.query()?)
            .find(|(key, value)| key == name && !value.is_empty())
            .map(|(_, value)| value.to_owned()),
    }
}

/// The value after `prefix`, trimmed. The prefix is compared ignoring ASCII case because the
/// usual one is an HTTP auth scheme (`Bearer `), which RFC 9110 makes case-insensitive.
fn after_prefix(value: &HeaderValue, prefix: &str) -> Option<String> {
    let text = value.to_str().ok()?;
    let start = text.get(..prefix.len())?;
    if !start.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let token = text.get(prefix.len()..)?.trim();
    (!token.is_empty()).then(|| token.to_owned())
}

/// `key=value` pairs as sent (not percent-decoded: a JWT is already URL-safe).
fn query_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

/// Takes the token out of the forwarded request: the whole header, as Envoy removes it, or
/// every occurrence of the query parameter, the other parameters kept in order.
pub(crate) fn remove(location: &Location, head: &mut Parts) {
    match location {
        Location::Header { name, .. } => {
            head.headers.remove(name);
        }
        Location::Param(name) => remove_param(head, name),
    }
}

fn remove_param(head: &mut Parts, name: &str) {
    let Some(query) = head.uri.query() else {
        return;
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| !pair.is_empty() && pair.split_once('=').map_or(*pair, |(k, _)| k) != name)
        .collect();
    let path = head.uri.path();
    let path_and_query = if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let mut parts = head.uri.clone().into_parts();
    // Both steps only fail on input that was already a valid URI, minus some of its bytes;
    // keeping the original then is safe because the request is forwarded either way.
    match PathAndQuery::try_from(path_and_query) {
        Ok(pq) => parts.path_and_query = Some(pq),
        Err(e) => {
            debug!(error = %e, "token parameter left in the query");
            return;
        }
    }
    match Uri::from_parts(parts) {
        Ok(uri) => head.uri = uri,
        Err(e) => debug!(error = %e, "token parameter left in the query"),
    }
}

/// `output_payload_to_header` and `output_claim_to_headers`, replacing any header of the same
/// name the client sent so it cannot pose as a validated claim.
pub(crate) fn write_outputs(rule: &Rule, jwt: &Jwt, headers: &mut HeaderMap) {
    if let Some(name) = &rule.payload_header {
        match HeaderValue::from_str(&jwt.payload_base64) {
            Ok(value) => {
                headers.insert(name.clone(), value);
            }
            Err(_) => debug!(header = %name, "payload is not a valid header value"),
        }
    }
    for output in &rule.claim_headers {
        let value = claim_text(&jwt.claims, &output.path)
            .and_then(|text| HeaderValue::from_str(&text).ok());
        match value {
            Some(value) => {
                headers.insert(output.header.clone(), value);
            }
            None => {
                headers.remove(&output.header);
            }
        }
    }
}

/// A claim as header text, as Envoy renders it: strings as they are, numbers and booleans in
/// JSON, a list of those joined with commas; objects and absent claims give nothing.
fn claim_text(claims: &Value, path: &[String]) -> Option<String> {
    let claim = path.iter().try_fold(claims, |value, key| value.get(key))?;
    match claim {
        Value::Array(items) => items
            .iter()
            .map(scalar_text)
            .collect::<Option<Vec<_>>>()
            .map(|texts| texts.join(",")),
        other => scalar_text(other),
    }
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}
