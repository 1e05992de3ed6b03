//! Istio's default path normalisation (`BASE`, policy.md §1.6): policies are matched against,
//! and the request is forwarded with, the normalised path, so `/v1/../admin` or `/%61dmin`
//! cannot slip past a rule on `/admin`.
//!
//! `\` becomes `/`; percent-escapes of unreserved characters (`-` `.` `0-9` `A-Z` `_` `a-z` `~`)
//! are decoded; dot segments are removed (RFC 3986 §5.2.4). `%2F` and `%5C` stay encoded and
//! `//` is not merged, as in Envoy's default. An escaped NUL is refused.

/// Why a path was refused (the request gets 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// `%00`.
    #[error("path contains an escaped NUL")]
    Nul,
    /// Not an origin-form path.
    #[error("path does not start with '/'")]
    NotAbsolute,
}

/// Splits `path?query` and normalises the path part; the query is returned untouched.
pub fn normalize(path_and_query: &str) -> Result<(String, Option<&str>), PathError> {
    let (path, query) = match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query, None),
    };
    if path.is_empty() {
        return Ok(("/".to_owned(), query));
    }
    if !path.starts_with('/') && !path.starts_with('\\') {
        return Err(PathError::NotAbsolute);
    }
    let decoded = decode_unreserved(&path.replace('\\', "/"))?;
    Ok((remove_dot_segments(&decoded), query))
}

fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(value) = bytes
                .get(i + 1..i + 3)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            if value == 0 {
                return Err(PathError::Nul);
            }
            if value.is_ascii_alphanumeric() || matches!(value, b'-' | b'.' | b'_' | b'~') {
                out.push(char::from(value));
            } else {
                out.push_str(&path[i..i + 3]);
            }
            i += 3;
            continue;
        }
        // Multi-byte characters are copied whole: the path came from a `str`.
        let ch = path[i..].chars().next().unwrap_or('\u{fffd}');
        out.push(ch);
        i += ch.len_utf8();
    }
    Ok(out)
}

/// RFC 3986 §5.2.4, on an absolute path.
fn remove_dot_segments(path: &str) -> String {
    let mut output: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." => trailing_slash = i == last,
            ".." => {
                output.pop();
                trailing_slash = i == last;
            }
            other => {
                output.push(other);
                trailing_slash = false;
            }
        }
    }
    let mut normalized = String::with_capacity(path.len());
    for segment in &output {
        normalized.push('/');
        normalized.push_str(segment);
    }
    if trailing_slash || normalized.is_empty() {
        normalized.push('/');
    }
    normalized
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_normalization() {
        let cases = [
            ("/v1/pay", "/v1/pay"),
            ("/v1/../admin", "/admin"),
            ("/v1/./pay", "/v1/pay"),
            ("/a/b/..", "/a/"),
            ("/..", "/"),
            ("/%61dmin", "/admin"),
            ("/%2e%2e/admin", "/admin"),
            ("/a%2Fb", "/a%2Fb"),
            ("/a%5cb", "/a%5cb"),
            ("\\admin", "/admin"),
            ("//double", "//double"),
            ("/", "/"),
            ("", "/"),
            ("/caf\u{e9}", "/caf\u{e9}"),
        ];
        for (input, want) in cases {
            assert_eq!(
                normalize(input).map(|(p, _)| p),
                Ok(want.to_owned()),
                "{input}"
            );
        }
    }

    #[test]
    fn query_is_split_off_untouched() {
        assert_eq!(
            normalize("/v1/pay?next=/admin/../x"),
            Ok(("/v1/pay".to_owned(), Some("next=/admin/../x")))
        );
    }

    #[test]
    fn refusals() {
        assert_eq!(normalize("/a%00b"), Err(PathError::Nul));
        assert_eq!(normalize("*"), Err(PathError::NotAbsolute));
    }
}
