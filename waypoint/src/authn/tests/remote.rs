//! `jwks_uri` against a real HTTP/1.1 server on 127.0.0.1, written here in a few lines so
//! its answers (status, body, silence) can change mid-test.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;

use super::*;

/// Bound on every wait in these tests.
const PATIENCE: Duration = Duration::from_secs(10);

#[derive(Clone)]
enum Reply {
    Answer {
        status: u16,
        body: String,
    },
    /// Reads the request and never answers.
    Silence,
}

struct JwksServer {
    uri: String,
    reply: Arc<Mutex<Reply>>,
    hits: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection task.
        self.task.abort();
    }
}

impl JwksServer {
    async fn start(reply: Reply) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri = format!("http://{}/keys/jwks.json", listener.local_addr().unwrap());
        let reply = Arc::new(Mutex::new(reply));
        let hits = Arc::new(AtomicUsize::new(0));
        let (shared_reply, shared_hits) = (Arc::clone(&reply), Arc::clone(&hits));
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let (reply, hits) = (Arc::clone(&shared_reply), Arc::clone(&shared_hits));
                connections.spawn(serve(stream, reply, hits));
            }
        });
        Self {
            uri,
            reply,
            hits,
            task,
        }
    }

    fn set(&self, reply: Reply) {
        *self.reply.lock().unwrap() = reply;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn serve<S>(mut stream: S, reply: Arc<Mutex<Reply>>, hits: Arc<AtomicUsize>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut request = Vec::new();
    let mut chunk = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&chunk[..n]),
        }
        if request.len() > 16 * 1024 {
            return;
        }
    }
    assert!(
        request.starts_with(b"GET /keys/jwks.json HTTP/1.1\r\n"),
        "{}",
        String::from_utf8_lossy(&request)
    );
    hits.fetch_add(1, Ordering::SeqCst);
    let reply = reply.lock().unwrap().clone();
    match reply {
        Reply::Answer { status, body } => {
            let head = format!(
                "HTTP/1.1 {status} Whatever\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
        Reply::Silence => {
            // Held open until the client gives up (or the test ends and aborts this task).
            let _ = stream.read(&mut chunk).await;
        }
    }
}

fn ok(body: String) -> Reply {
    Reply::Answer { status: 200, body }
}

fn remote_rule(uri: &str) -> pb::JwtRule {
    pb::JwtRule {
        keys: Some(pb::jwt_rule::Keys::JwksUri(uri.to_owned())),
        ..world_rule()
    }
}

fn settings(refresh_interval: Duration, retry_interval: Duration) -> AuthnSettings {
    AuthnSettings {
        refresh_interval,
        retry_interval,
        ..AuthnSettings::default()
    }
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {PATIENCE:?}"))
}

#[tokio::test]
async fn fetched_keys_verify_and_stay_when_a_refresh_fails() {
    let server = JwksServer::start(ok(trusted_jwks())).await;
    let rules = rules(&[remote_rule(&server.uri)]);
    // Keys are due for a refresh at once, and a failed refresh may be retried at once, so
    // every request below starts a refresh unless one is in flight.
    let authn = Authenticator::new(settings(Duration::ZERO, Duration::ZERO));
    let token = Signer::trusted().sign(&claims());

    let got = within(
        "first request",
        authn.authenticate(&rules, &mut bearer(&token)),
    )
    .await;
    accepted(got);
    assert_eq!(server.hits(), 1);

    server.set(Reply::Answer {
        status: 500,
        body: "down".to_owned(),
    });
    // Refreshes are single-flight, so once the server has seen a third fetch the second one
    // (a 500) has been recorded; every request until then, and after, is served stale keys.
    within("two failed refreshes", async {
        while server.hits() < 3 {
            let outcome = authn.authenticate(&rules, &mut bearer(&token)).await;
            accepted(outcome);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let got = within(
        "request after failures",
        authn.authenticate(&rules, &mut bearer(&token)),
    )
    .await;
    accepted(got);
}

#[tokio::test]
async fn keys_are_not_refetched_before_the_refresh_interval() {
    let server = JwksServer::start(ok(trusted_jwks())).await;
    let rules = rules(&[remote_rule(&server.uri)]);
    let authn = Authenticator::new(AuthnSettings::default());
    let token = Signer::trusted().sign(&claims());
    for _ in 0..3 {
        accepted(within("request", authn.authenticate(&rules, &mut bearer(&token))).await);
    }
    // A clone shares the cache.
    let clone = authn.clone();
    accepted(within("request", clone.authenticate(&rules, &mut bearer(&token))).await);
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn never_fetched_keys_refuse_and_retry_after_the_interval() {
    let server = JwksServer::start(Reply::Answer {
        status: 503,
        body: String::new(),
    })
    .await;
    let rules = rules(&[remote_rule(&server.uri)]);
    let retry = Duration::from_millis(200);
    let authn = Authenticator::new(settings(DEFAULT_REFRESH_INTERVAL, retry));
    let token = Signer::trusted().sign(&claims());

    let refusal = refused(within("first", authn.authenticate(&rules, &mut bearer(&token))).await);
    assert_eq!(
        (refusal.status(), refusal.body()),
        (StatusCode::UNAUTHORIZED, "Jwks remote fetch is failed")
    );
    let line = mesh::errors::chain(&refusal);
    assert!(
        line.contains(ISSUER) && line.contains(&server.uri) && line.contains("503"),
        "{line}"
    );
    // Within the retry interval the last failure answers, without a fetch.
    let refusal = refused(within("second", authn.authenticate(&rules, &mut bearer(&token))).await);
    assert_eq!(refusal.body(), "Jwks remote fetch is failed");
    assert_eq!(server.hits(), 1);

    server.set(ok(trusted_jwks()));
    tokio::time::sleep(retry).await;
    accepted(
        within(
            "after the interval",
            authn.authenticate(&rules, &mut bearer(&token)),
        )
        .await,
    );
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn prefetch_fetches_before_the_first_request() {
    let server = JwksServer::start(ok(trusted_jwks())).await;
    let rules = rules(&[remote_rule(&server.uri)]);
    let authn = Authenticator::new(AuthnSettings::default());
    authn.prefetch(&rules);
    // The request joins the prefetch in flight (or finds its keys) instead of fetching again.
    let token = Signer::trusted().sign(&claims());
    accepted(within("request", authn.authenticate(&rules, &mut bearer(&token))).await);
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn fetch_failures_name_what_failed() {
    let silent = JwksServer::start(Reply::Silence).await;
    let huge = JwksServer::start(ok(" ".repeat(MAX_JWKS_BODY + 1))).await;
    let not_jwks = JwksServer::start(ok(r#"{"issuer": "not a jwks"}"#.to_owned())).await;
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        format!("http://{}/keys/jwks.json", listener.local_addr().unwrap())
    };
    let cases = [
        (silent.uri.clone(), "no complete answer within 300ms"),
        (huge.uri.clone(), "body larger than 1048576 bytes"),
        (not_jwks.uri.clone(), "no \"keys\" list"),
        (closed, "connecting to 127.0.0.1:"),
    ];
    let authn = Authenticator::new(AuthnSettings::default());
    let token = Signer::trusted().sign(&claims());
    for (uri, expected) in cases {
        let rule = pb::JwtRule {
            jwks_fetch_timeout_ms: 300,
            ..remote_rule(&uri)
        };
        let outcome = within(
            &uri,
            authn.authenticate(&rules(&[rule]), &mut bearer(&token)),
        )
        .await;
        let line = mesh::errors::chain(&refused(outcome));
        assert!(line.contains(expected), "{uri}: {line}");
    }
}

/// A JWKS server behind TLS with a fresh self-signed certificate for `localhost`.
struct HttpsJwksServer {
    uri: String,
    ca_pem: String,
    task: JoinHandle<()>,
}

impl Drop for HttpsJwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HttpsJwksServer {
    async fn start(body: String) -> Self {
        use tokio_rustls::rustls::{self, pki_types::PrivateKeyDer};

        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let reply = Arc::new(Mutex::new(ok(body)));
        let hits = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, reply, hits) =
                    (acceptor.clone(), Arc::clone(&reply), Arc::clone(&hits));
                connections.spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        serve(tls, reply, hits).await;
                    }
                });
            }
        });
        Self {
            uri: format!("https://localhost:{port}/keys/jwks.json"),
            ca_pem: cert.pem(),
            task,
        }
    }
}

/// A file that is removed when the test ends, pass or fail.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(name: &str, contents: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("waypoint-authn-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test]
async fn https_keys_are_fetched_through_the_configured_roots() {
    let server = HttpsJwksServer::start(trusted_jwks()).await;
    let other = HttpsJwksServer::start(trusted_jwks()).await;
    let right_roots = TempFile::new("right-roots.pem", &server.ca_pem);
    let wrong_roots = TempFile::new("wrong-roots.pem", &other.ca_pem);
    let no_roots = TempFile::new("no-roots.pem", "not a certificate\n");
    let rules = rules(&[remote_rule(&server.uri)]);
    let token = Signer::trusted().sign(&claims());

    let with_roots = |file: &TempFile| {
        Authenticator::new(AuthnSettings {
            ca_file: Some(file.0.clone()),
            ..AuthnSettings::default()
        })
    };
    let outcome = within(
        "https fetch",
        with_roots(&right_roots).authenticate(&rules, &mut bearer(&token)),
    )
    .await;
    accepted(outcome);

    for (roots, expected) in [
        (&wrong_roots, "TLS handshake with localhost:"),
        (&no_roots, "holds no usable PEM certificate"),
    ] {
        let outcome = within(
            "https fetch",
            with_roots(roots).authenticate(&rules, &mut bearer(&token)),
        )
        .await;
        let line = mesh::errors::chain(&refused(outcome));
        assert!(line.contains(expected), "{line}");
    }
}
