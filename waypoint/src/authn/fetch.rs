//! One JWKS download: HTTP/1.1 GET over TCP, or over rustls for `https` (roots from a PEM
//! bundle), bounded in time by the caller and in size by [`MAX_JWKS_BODY`].

use std::io;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::OnceCell;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

use super::DEFAULT_CA_FILE;
use super::keys::{JwksError, KeySet};

/// Largest JWKS body accepted, in bytes; a bigger one fails the fetch with
/// [`FetchError::TooLarge`] (real JWKS are a few KiB; this bounds what a server can make us hold).
pub const MAX_JWKS_BODY: usize = 1024 * 1024;

/// Why a JWKS could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URI cannot be fetched (rules are checked earlier, so this is a bug's symptom).
    #[error("{uri} is not an http or https URL with a host")]
    BadUri {
        /// The URI.
        uri: String,
    },
    /// The trust roots for `https` could not be read.
    #[error("reading trust roots from {}", path.display())]
    Roots {
        /// The PEM bundle.
        path: PathBuf,
        /// The read failure.
        #[source]
        cause: io::Error,
    },
    /// The trust root bundle holds no usable certificate.
    #[error("{} holds no usable PEM certificate", path.display())]
    NoRoots {
        /// The PEM bundle.
        path: PathBuf,
    },
    /// rustls refused the client configuration.
    #[error("building the TLS client configuration")]
    TlsConfig(#[source] rustls::Error),
    /// The TCP connection failed.
    #[error("connecting to {authority}")]
    Connect {
        /// `host:port`.
        authority: String,
        /// The socket error.
        #[source]
        cause: io::Error,
    },
    /// The TLS handshake failed.
    #[error("TLS handshake with {authority}")]
    Tls {
        /// `host:port`.
        authority: String,
        /// The handshake error.
        #[source]
        cause: io::Error,
    },
    /// The HTTP exchange failed.
    #[error("HTTP exchange with {authority}")]
    Http {
        /// `host:port`.
        authority: String,
        /// hyper's error.
        #[source]
        cause: hyper::Error,
    },
    /// The connection closed before the response was complete.
    #[error("{authority} closed the connection before the response was complete")]
    Closed {
        /// `host:port`.
        authority: String,
    },
    /// The server answered with a status other than 200.
    #[error("answered {status}")]
    Status {
        /// The response status.
        status: StatusCode,
    },
    /// The body exceeded [`MAX_JWKS_BODY`].
    #[error("body larger than {limit} bytes")]
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// No complete answer within the limit.
    #[error("no complete answer within {limit:?}")]
    Timeout {
        /// The limit applied.
        limit: Duration,
    },
    /// The body is not a usable JWKS.
    #[error("the body is not a usable JWKS")]
    Jwks(#[source] JwksError),
}

/// `https` client configuration, built on first use from the roots file so a waypoint with
/// only inline or `http` keys never reads it.
#[derive(Debug)]
pub(crate) struct TlsClient {
    ca_file: Option<PathBuf>,
    config: OnceCell<Arc<ClientConfig>>,
}

impl TlsClient {
    pub(crate) fn new(ca_file: Option<PathBuf>) -> Self {
        Self {
            ca_file,
            config: OnceCell::new(),
        }
    }

    async fn config(&self) -> Result<Arc<ClientConfig>, FetchError> {
        // A failure is not cached: the bundle may be fixed, and the next fetch tries again.
        self.config
            .get_or_try_init(|| async { load_client_config(self.ca_path()) })
            .await
            .cloned()
    }

    fn ca_path(&self) -> PathBuf {
        self.ca_file
            .clone()
            .or_else(|| std::env::var_os("SSL_CERT_FILE").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CA_FILE))
    }
}

/// The bundle is read with blocking I/O: once per process, a few hundred KiB.
fn load_client_config(path: PathBuf) -> Result<Arc<ClientConfig>, FetchError> {
    let pem = std::fs::read(&path).map_err(|cause| FetchError::Roots {
        path: path.clone(),
        cause,
    })?;
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots
        .add_parsable_certificates(CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok));
    if added == 0 {
        return Err(FetchError::NoRoots { path });
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(FetchError::TlsConfig)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// GETs `uri` and parses the body as a JWKS, all within `limit`.
pub(crate) async fn fetch_jwks(
    uri: &Uri,
    limit: Duration,
    tls: &TlsClient,
) -> Result<KeySet, FetchError> {
    let body = tokio::time::timeout(limit, download(uri, tls))
        .await
        .map_err(|_| FetchError::Timeout { limit })??;
    KeySet::parse(&body).map_err(FetchError::Jwks)
}

async fn download(uri: &Uri, tls: &TlsClient) -> Result<Vec<u8>, FetchError> {
    let bad_uri = || FetchError::BadUri {
        uri: uri.to_string(),
    };
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(bad_uri()),
    };
    let host = uri
        .host()
        .ok_or_else(bad_uri)?
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let authority = format!("{host}:{port}");
    let request = Request::get(uri.path_and_query().map_or("/", |pq| pq.as_str()))
        .header(header::HOST, uri.authority().map_or(host, |a| a.as_str()))
        .header(header::ACCEPT, "application/json")
        .header(header::USER_AGENT, "waypoint-jwks")
        .body(Empty::<Bytes>::new())
        .map_err(|_| bad_uri())?;

    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|cause| FetchError::Connect {
            authority: authority.clone(),
            cause,
        })?;
    if !https {
        return exchange(TokioIo::new(tcp), request, authority).await;
    }
    let name = ServerName::try_from(host.to_owned()).map_err(|_| bad_uri())?;
    let stream = TlsConnector::from(tls.config().await?)
        .connect(name, tcp)
        .await
        .map_err(|cause| FetchError::Tls {
            authority: authority.clone(),
            cause,
        })?;
    exchange(TokioIo::new(stream), request, authority).await
}

/// Drives the connection in this future (no spawned task), so a timeout drops all of it.
async fn exchange<T>(
    io: T,
    request: Request<Empty<Bytes>>,
    authority: String,
) -> Result<Vec<u8>, FetchError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let http = |cause| FetchError::Http {
        authority: authority.clone(),
        cause,
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(http)?;
    let mut response = pin!(async {
        let response = sender.send_request(request).await.map_err(http)?;
        if response.status() != StatusCode::OK {
            return Err(FetchError::Status {
                status: response.status(),
            });
        }
        read_body(response.into_body(), &authority).await
    });
    tokio::select! {
        result = &mut response => result,
        closed = connection => {
            closed.map_err(http)?;
            // A server that closes after the last byte ends the connection first; the body is
            // buffered by then, or the response fails on its own.
            match response.await {
                Err(FetchError::Http { .. }) => Err(FetchError::Closed { authority: authority.clone() }),
                other => other,
            }
        }
    }
}

/// The body, up to [`MAX_JWKS_BODY`] bytes.
async fn read_body(mut body: Incoming, authority: &str) -> Result<Vec<u8>, FetchError> {
    let mut buffer = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|cause| FetchError::Http {
            authority: authority.to_owned(),
            cause,
        })?;
        if let Ok(data) = frame.into_data() {
            if buffer.len().saturating_add(data.len()) > MAX_JWKS_BODY {
                return Err(FetchError::TooLarge {
                    limit: MAX_JWKS_BODY,
                });
            }
            buffer.extend_from_slice(&data);
        }
    }
    Ok(buffer)
}
