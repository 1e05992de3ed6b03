//! The certificate store: one fresh certificate per workload identity on this node.
//!
//! Each identity gets a worker task that fetches through a [`CertificateProvider`] (the local CA
//! today; istiod's CA and SPIRE later), refreshes at half life with a little jitter so that the
//! certificates of a node issued together are not renewed together, and on failure keeps serving
//! the certificate it holds while that one is valid, retrying with backoff. A connection asking
//! for a certificate gets the current one at once; only the first fetch of an identity is waited
//! for, and that wait is bounded by the fetch timeout.
//!
//! Deadlines are kept on tokio's monotonic clock: the certificate's wall-clock validity is turned
//! into an [`Instant`] once, when it arrives, so a wall-clock step cannot make the store serve an
//! expired certificate or refresh in a burst.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::certificate::{CertificateError, WorkloadCertificate};
use super::spiffe::SpiffeId;
use crate::backoff::{Backoff, BackoffPolicy};

/// What a provider's fetch returns.
pub type ProviderFuture<'a> =
    Pin<Box<dyn Future<Output = Result<WorkloadCertificate, FetchError>> + Send + 'a>>;

/// A source of workload certificates: signs a fresh key for an identity.
pub trait CertificateProvider: Send + Sync + 'static {
    /// Obtains a new certificate (with a new key) for `identity`.
    fn fetch<'a>(&'a self, identity: &'a SpiffeId) -> ProviderFuture<'a>;
}

/// Why a fetch failed. Cloneable, because the last failure is what every waiting connection is
/// told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The CA answered with a refusal (a gRPC status, or the local CA's error).
    #[error("CA refused to sign: {0}")]
    Refused(String),
    /// The CA could not be reached.
    #[error("CA unreachable: {0}")]
    Unreachable(String),
    /// The CA did not answer within the fetch timeout.
    #[error("CA did not answer within {0:?}")]
    Timeout(Duration),
    /// The CA returned a certificate for someone else.
    #[error("CA issued a certificate for {got}, requested {want}")]
    WrongIdentity {
        /// The identity in the returned leaf.
        got: SpiffeId,
        /// The identity requested.
        want: SpiffeId,
    },
    /// The returned certificate is unusable.
    #[error("CA returned an unusable certificate")]
    Invalid(#[source] CertificateError),
    /// The returned certificate is already past `notAfter`.
    #[error("CA returned a certificate that has already expired")]
    AlreadyExpired,
}

/// Why the store could not hand out a certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// No valid certificate is held; the last fetch failed.
    #[error("no certificate for {identity}")]
    Unavailable {
        /// The identity asked for.
        identity: SpiffeId,
        /// The last fetch's failure (shared with every caller that asked meanwhile).
        #[source]
        cause: Arc<FetchError>,
    },
    /// The held certificate expired and no replacement has arrived yet.
    #[error("certificate for {0} expired and no renewal has arrived")]
    Expired(SpiffeId),
    /// The store was dropped or the identity forgotten while waiting.
    #[error("certificate store stopped while fetching for {0}")]
    Stopped(SpiffeId),
}

/// Timing of fetches and refreshes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RefreshPolicy {
    /// Longest one fetch may take before it counts as failed.
    pub fetch_timeout: Duration,
    /// Delays between failed attempts.
    pub backoff: BackoffPolicy,
    /// Refresh happens this fraction of the lifetime *before* half life, drawn uniformly from
    /// `[0, refresh_jitter]`, so certificates issued together are renewed apart.
    pub refresh_jitter: f64,
    /// Shortest wait before a refresh, so a certificate with an odd validity cannot make the
    /// worker spin.
    pub min_refresh_interval: Duration,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        Self {
            fetch_timeout: Duration::from_secs(10),
            backoff: BackoffPolicy::default(),
            refresh_jitter: 0.05,
            min_refresh_interval: Duration::from_secs(1),
        }
    }
}

/// The state of one identity, as the admin surface shows it.
#[derive(Debug, Clone)]
pub enum CertState {
    /// The first fetch is running.
    Initializing,
    /// A certificate valid until `expires_at` (monotonic) is served.
    Available {
        /// The certificate.
        cert: Arc<WorkloadCertificate>,
        /// When it stops being served.
        expires_at: Instant,
    },
    /// The last fetch failed and no valid certificate is held.
    Unavailable(Arc<FetchError>),
}

struct Entry {
    state: watch::Receiver<CertState>,
    worker: AbortHandle,
}

struct Inner {
    provider: Arc<dyn CertificateProvider>,
    policy: RefreshPolicy,
    runtime: Handle,
    // Held only to look up or insert an entry, never across an await.
    entries: Mutex<HashMap<SpiffeId, Entry>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for entry in lock(&self.entries).values() {
            entry.worker.abort();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves a map that is still consistent (every
    // mutation is a single insert or remove), so keep serving rather than propagate the panic.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Certificates by identity, kept fresh in the background. Cheap to clone.
#[derive(Clone)]
pub struct CertStore {
    inner: Arc<Inner>,
}

impl CertStore {
    /// A store whose workers run on `runtime` (the control runtime, so CA traffic never competes
    /// with the data path).
    pub fn new(
        provider: Arc<dyn CertificateProvider>,
        policy: RefreshPolicy,
        runtime: Handle,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                provider,
                policy,
                runtime,
                entries: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The current certificate for `identity`, fetching it first if it is new.
    pub async fn get(&self, identity: &SpiffeId) -> Result<Arc<WorkloadCertificate>, StoreError> {
        let mut state = self.watch(identity);
        let current = state
            .wait_for(|s| !matches!(s, CertState::Initializing))
            .await
            .map_err(|_| StoreError::Stopped(identity.clone()))?
            .clone();
        serve(identity, current, Instant::now())
    }

    /// Starts fetching `identity` without waiting (prefetch for a workload about to arrive).
    pub fn prefetch(&self, identity: &SpiffeId) {
        drop(self.watch(identity));
    }

    /// Follows the state of `identity`, starting its worker if it has none.
    pub fn watch(&self, identity: &SpiffeId) -> watch::Receiver<CertState> {
        let mut entries = lock(&self.inner.entries);
        if let Some(entry) = entries.get(identity) {
            return entry.state.clone();
        }
        let (tx, rx) = watch::channel(CertState::Initializing);
        let worker = self.inner.runtime.spawn(run_worker(
            Arc::clone(&self.inner.provider),
            self.inner.policy,
            identity.clone(),
            tx,
        ));
        entries.insert(
            identity.clone(),
            Entry {
                state: rx.clone(),
                worker: worker.abort_handle(),
            },
        );
        rx
    }

    /// Drops `identity`: cancels its refresh and any fetch in flight.
    pub fn forget(&self, identity: &SpiffeId) {
        if let Some(entry) = lock(&self.inner.entries).remove(identity) {
            entry.worker.abort();
        }
    }

    /// Every identity and its state, sorted by identity.
    pub fn states(&self) -> Vec<(SpiffeId, CertState)> {
        let mut all: Vec<_> = lock(&self.inner.entries)
            .iter()
            .map(|(id, entry)| (id.clone(), entry.state.borrow().clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

/// What a caller gets for a state at `now`. The expiry check here is the guarantee that an
/// expired certificate is never handed out, whatever the worker is doing.
fn serve(
    identity: &SpiffeId,
    state: CertState,
    now: Instant,
) -> Result<Arc<WorkloadCertificate>, StoreError> {
    match state {
        CertState::Available { cert, expires_at } if now < expires_at => Ok(cert),
        CertState::Available { .. } => Err(StoreError::Expired(identity.clone())),
        CertState::Unavailable(cause) => Err(StoreError::Unavailable {
            identity: identity.clone(),
            cause,
        }),
        // `get` waits this state out; reaching it means the worker is gone.
        CertState::Initializing => Err(StoreError::Stopped(identity.clone())),
    }
}

async fn run_worker(
    provider: Arc<dyn CertificateProvider>,
    policy: RefreshPolicy,
    identity: SpiffeId,
    state: watch::Sender<CertState>,
) {
    let mut backoff = Backoff::new(policy.backoff);
    loop {
        let fetched =
            match tokio::time::timeout(policy.fetch_timeout, provider.fetch(&identity)).await {
                Ok(result) => result.and_then(|cert| accept(&identity, cert, &policy)),
                Err(_) => Err(FetchError::Timeout(policy.fetch_timeout)),
            };
        let wait = match fetched {
            Ok((next, refresh_in)) => {
                backoff.reset();
                if let CertState::Available { cert, .. } = &next {
                    debug!(identity = %identity, serial = %cert.leaf().serial,
                        refresh_in = ?refresh_in, "certificate fetch succeeded");
                }
                state.send_replace(next);
                refresh_in
            }
            Err(cause) => on_failure(&identity, &state, cause, backoff.next_delay()),
        };
        tokio::time::sleep(wait).await;
    }
}

/// Keeps a still-valid certificate through a failed refresh; otherwise publishes the failure.
/// Returns how long to wait before the next attempt.
fn on_failure(
    identity: &SpiffeId,
    state: &watch::Sender<CertState>,
    cause: FetchError,
    retry_in: Duration,
) -> Duration {
    let now = Instant::now();
    let held_until = match &*state.borrow() {
        CertState::Available { expires_at, .. } if now < *expires_at => Some(*expires_at),
        _ => None,
    };
    match held_until {
        Some(expires_at) => {
            // Retry no later than expiry, so a lapse is noticed and published on time.
            let retry_in = retry_in.min(expires_at - now);
            info!(identity = %identity, error = %cause, retry_in = ?retry_in,
                "certificate renewal failed; retaining the current certificate until it expires");
            retry_in
        }
        None => {
            warn!(identity = %identity, error = %cause, retry_in = ?retry_in,
                "certificate fetch failed and no valid certificate is held");
            state.send_replace(CertState::Unavailable(Arc::new(cause)));
            retry_in
        }
    }
}

/// Checks a fetched certificate and turns its validity into monotonic deadlines: when to stop
/// serving it, and when to refresh it.
fn accept(
    identity: &SpiffeId,
    cert: WorkloadCertificate,
    policy: &RefreshPolicy,
) -> Result<(CertState, Duration), FetchError> {
    if cert.identity() != identity {
        return Err(FetchError::WrongIdentity {
            got: cert.identity().clone(),
            want: identity.clone(),
        });
    }
    let now_wall = SystemTime::now();
    let now = Instant::now();
    let leaf = cert.leaf();
    let remaining = leaf
        .not_after
        .duration_since(now_wall)
        .map_err(|_| FetchError::AlreadyExpired)?;
    let lifetime = leaf
        .not_after
        .duration_since(leaf.not_before)
        .unwrap_or(Duration::ZERO);
    let early = lifetime.mul_f64(policy.refresh_jitter.clamp(0.0, 0.5) * fastrand::f64());
    let refresh_at = leaf.not_before + lifetime / 2 - early;
    let refresh_in = refresh_at
        .duration_since(now_wall)
        .unwrap_or(Duration::ZERO)
        .max(policy.min_refresh_interval);
    let state = CertState::Available {
        cert: Arc::new(cert),
        expires_at: now + remaining,
    };
    Ok((state, refresh_in))
}

#[cfg(test)]
mod tests;
