//! Reading another proxy's `/metrics`: one bounded HTTP/1.1 GET, and a parser for the
//! Prometheus/OpenMetrics text it returns. Tools (the rollout reports, the tests) use it to read
//! what a running ztunnel counted, exactly as a Prometheus server would see it.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Largest body read from one scrape: a ztunnel with thousands of workloads stays well under.
const BODY_LIMIT: usize = 64 << 20;

/// One series' value at scrape time.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Exposition name, e.g. `istio_tcp_connections_opened_total`.
    pub name: String,
    /// Label names to values, unescaped.
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, or `""` when the series has no such label.
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

/// Why a scrape failed; each variant names the target.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// The target is not `host:port` or an `http://` URL.
    #[error("{target}: not host:port or http://host:port/path")]
    Target {
        /// What was given.
        target: String,
    },
    /// No answer within the time allowed.
    #[error("{target}: no answer within {limit:?}")]
    Timeout {
        /// The target.
        target: String,
        /// The time allowed.
        limit: Duration,
    },
    /// The TCP connection or the HTTP exchange failed.
    #[error("{target}: {cause}")]
    Transport {
        /// The target.
        target: String,
        /// What failed.
        cause: String,
    },
    /// The server answered with something other than 200.
    #[error("{target}: HTTP {status}")]
    Status {
        /// The target.
        target: String,
        /// Its answer.
        status: StatusCode,
    },
    /// The body was not the text exposition format.
    #[error("{target}: {source}")]
    Parse {
        /// The target.
        target: String,
        /// The first bad line.
        source: ParseError,
    },
}

/// A line of exposition text that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {reason}: {text:?}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What was wrong.
    pub reason: &'static str,
    /// The line (cut to 120 characters).
    pub text: String,
}

/// Where a target's metrics are: `host:port` means `http://host:port/metrics`.
pub fn metrics_uri(target: &str) -> Result<Uri, ScrapeError> {
    let bad = || ScrapeError::Target {
        target: target.to_owned(),
    };
    let full = if target.contains("://") {
        target.to_owned()
    } else {
        format!("http://{target}/metrics")
    };
    let uri: Uri = full.parse().map_err(|_| bad())?;
    if uri.scheme_str() != Some("http") || uri.port_u16().is_none() || uri.host().is_none() {
        return Err(bad());
    }
    Ok(uri)
}

/// GETs the exposition text of `target` (see [`metrics_uri`]) within `limit`.
pub async fn fetch(target: &str, limit: Duration) -> Result<String, ScrapeError> {
    let uri = metrics_uri(target)?;
    let transport = |cause: String| ScrapeError::Transport {
        target: target.to_owned(),
        cause,
    };
    let exchange = async {
        let (host, port) = (uri.host().unwrap_or_default(), uri.port_u16().unwrap_or(80));
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let tcp = TcpStream::connect((host, port))
            .await
            .map_err(|e| transport(format!("connect: {e}")))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| transport(format!("HTTP handshake: {e}")))?;
        tokio::spawn(connection);
        let request = Request::get(uri.path_and_query().map_or("/metrics", |p| p.as_str()))
            .header(header::HOST, uri.authority().map_or("", |a| a.as_str()))
            .body(Empty::<Bytes>::new())
            .map_err(|e| transport(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| transport(format!("request: {e}")))?;
        if response.status() != StatusCode::OK {
            return Err(ScrapeError::Status {
                target: target.to_owned(),
                status: response.status(),
            });
        }
        let body = Limited::new(response.into_body(), BODY_LIMIT)
            .collect()
            .await
            .map_err(|e| transport(format!("body: {e}")))?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|_| transport("body is not UTF-8".to_owned()))
    };
    tokio::time::timeout(limit, exchange)
        .await
        .map_err(|_| ScrapeError::Timeout {
            target: target.to_owned(),
            limit,
        })?
}

/// [`fetch`], then [`parse`].
pub async fn scrape(target: &str, limit: Duration) -> Result<Vec<Sample>, ScrapeError> {
    let text = fetch(target, limit).await?;
    parse(&text).map_err(|source| ScrapeError::Parse {
        target: target.to_owned(),
        source,
    })
}

/// Every sample of an exposition text (comments, `# EOF` and blank lines skipped; timestamps
/// and exemplars ignored).
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut samples = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fail = |reason| ParseError {
            line: index + 1,
            reason,
            text: line.chars().take(120).collect(),
        };
        let name_end = line.find(['{', ' ']).ok_or_else(|| fail("no value"))?;
        let name = &line[..name_end];
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        {
            return Err(fail("bad metric name"));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end + 1..]).ok_or_else(|| fail("bad label set"))?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let value = rest
            .split_whitespace()
            .next()
            .ok_or_else(|| fail("no value"))?;
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            other => other.parse().map_err(|_| fail("bad value"))?,
        };
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    Ok(samples)
}

/// `a="x",b="y\"z"} rest` → the labels and ` rest`.
fn parse_labels(mut text: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    loop {
        text = text.trim_start_matches([' ', ',']);
        if let Some(rest) = text.strip_prefix('}') {
            return Some((labels, rest));
        }
        let (name, rest) = text.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(name.trim().to_owned(), value);
        text = &rest[end + 1..];
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_series_with_escaped_labels_and_skips_descriptors() {
        let text = "# HELP istio_build Istio component build info.\n\
                    # TYPE istio_build gauge\n\
                    istio_build{component=\"ztunnel\",tag=\"1.2\"} 1\n\
                    up 1 1700000000\n\
                    odd{msg=\"a \\\"quoted\\\" word, and } too\",x=\"\"} 2.5\n\
                    # EOF\n";
        let samples = parse(text).unwrap();
        assert_eq!(samples.len(), 3);
        assert_eq!(samples[0].label("component"), "ztunnel");
        assert_eq!(samples[1].name, "up");
        assert!(samples[1].labels.is_empty());
        assert_eq!(samples[2].label("msg"), "a \"quoted\" word, and } too");
        assert_eq!(samples[2].label("x"), "");
        assert!((samples[2].value - 2.5).abs() < f64::EPSILON);
    }

    #[test]
    fn a_broken_line_is_named() {
        let err = parse("ok 1\nbroken{a=\"x} 1\n").unwrap_err();
        assert_eq!(err.line, 2);
        let err = parse("fine{a=\"x\"} NaNish\n").unwrap_err();
        assert_eq!(err.reason, "bad value");
    }

    #[test]
    fn targets_are_host_port_or_http_urls() {
        assert_eq!(
            metrics_uri("10.0.0.1:15020").unwrap().to_string(),
            "http://10.0.0.1:15020/metrics"
        );
        assert_eq!(
            metrics_uri("http://[::1]:15020/stats/prometheus")
                .unwrap()
                .path(),
            "/stats/prometheus"
        );
        assert!(metrics_uri("https://x:1/metrics").is_err());
        assert!(metrics_uri("no-port").is_err());
    }

    #[tokio::test]
    async fn a_closed_port_fails_with_the_target_named() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = fetch(&addr.to_string(), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(err.to_string().starts_with(&addr.to_string()), "{err}");
    }
}
