//! Remote JWKS, cached per URI. Reads are lock-free snapshots; fetches are one at a time per
//! URI. Keys older than the refresh interval keep serving while a background task replaces
//! them; a failed refresh keeps them (with one `warn!`). Keys never fetched make the request
//! wait for a fetch, at most one attempt per retry interval, so an unreachable server costs a
//! request nothing more than the last failure until the interval has passed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::Uri;
use tokio::sync::Mutex;
use tracing::{debug, warn};

use super::AuthnSettings;
use super::fetch::{self, FetchError, TlsClient};
use super::keys::KeySet;
use super::rules::RemoteJwks;

pub(crate) struct RemoteKeys {
    entries: ArcSwap<HashMap<String, Arc<Entry>>>,
    tls: Arc<TlsClient>,
    fetch_timeout: Duration,
    timing: Timing,
}

#[derive(Debug, Clone, Copy)]
struct Timing {
    refresh_interval: Duration,
    retry_interval: Duration,
}

struct Entry {
    uri: Uri,
    state: ArcSwap<State>,
    /// Held for the length of a fetch, so a URI has at most one in flight.
    fetching: Arc<Mutex<()>>,
}

#[derive(Default)]
struct State {
    keys: Option<Arc<KeySet>>,
    fetched_at: Option<Instant>,
    attempted_at: Option<Instant>,
    /// The last attempt's failure; `None` once an attempt succeeds.
    error: Option<Arc<FetchError>>,
}

impl Timing {
    fn attempted_recently(self, state: &State, now: Instant) -> bool {
        state
            .attempted_at
            .is_some_and(|at| now.duration_since(at) < self.retry_interval)
    }

    fn refresh_due(self, state: &State, now: Instant) -> bool {
        state
            .fetched_at
            .is_some_and(|at| now.duration_since(at) >= self.refresh_interval)
            && !self.attempted_recently(state, now)
    }

    fn never_attempted(self, state: &State, _now: Instant) -> bool {
        state.attempted_at.is_none()
    }
}

impl RemoteKeys {
    pub(crate) fn new(settings: &AuthnSettings) -> Self {
        Self {
            entries: ArcSwap::from_pointee(HashMap::new()),
            tls: Arc::new(TlsClient::new(settings.ca_file.clone())),
            fetch_timeout: settings.fetch_timeout,
            timing: Timing {
                refresh_interval: settings.refresh_interval,
                retry_interval: settings.retry_interval,
            },
        }
    }

    /// The keys at `remote.uri`: cached ones (a refresh started when due), else the result of
    /// a fetch this call waits for. The error is the last attempt's.
    pub(crate) async fn keys(&self, remote: &RemoteJwks) -> Result<Arc<KeySet>, Arc<FetchError>> {
        let entry = self.entry(&remote.uri);
        let limit = self.limit(remote);
        let state = entry.state.load_full();
        if let Some(keys) = &state.keys {
            if self.timing.refresh_due(&state, Instant::now()) {
                self.spawn_fetch(&entry, limit, Timing::refresh_due);
            }
            return Ok(Arc::clone(keys));
        }
        if let Some(error) = self.recent_failure(&state) {
            return Err(error);
        }
        // Joins a fetch in flight (a prefetch, or a concurrent request's) rather than racing it.
        let Ok(_fetching) = tokio::time::timeout(limit, entry.fetching.lock()).await else {
            return Err(Arc::new(FetchError::Timeout { limit }));
        };
        let state = entry.state.load_full();
        if let Some(keys) = &state.keys {
            return Ok(Arc::clone(keys));
        }
        if let Some(error) = self.recent_failure(&state) {
            return Err(error);
        }
        entry.fetch(limit, &self.tls).await
    }

    /// Starts a background fetch of keys never fetched (see `Authenticator::prefetch`).
    pub(crate) fn prefetch(&self, remote: &RemoteJwks) {
        let entry = self.entry(&remote.uri);
        if entry.state.load().attempted_at.is_none() {
            self.spawn_fetch(&entry, self.limit(remote), Timing::never_attempted);
        }
    }

    fn limit(&self, remote: &RemoteJwks) -> Duration {
        remote.fetch_timeout.unwrap_or(self.fetch_timeout)
    }

    fn recent_failure(&self, state: &State) -> Option<Arc<FetchError>> {
        if !self.timing.attempted_recently(state, Instant::now()) {
            return None;
        }
        state.error.clone()
    }

    fn entry(&self, uri: &Uri) -> Arc<Entry> {
        let key = uri.to_string();
        if let Some(entry) = self.entries.load().get(&key) {
            return Arc::clone(entry);
        }
        // Once per URI: copy the map with the new entry (another caller may have added it).
        self.entries.rcu(|entries| {
            let mut next = HashMap::clone(entries);
            next.entry(key.clone())
                .or_insert_with(|| Arc::new(Entry::new(uri.clone())));
            next
        });
        match self.entries.load().get(&key) {
            Some(entry) => Arc::clone(entry),
            // Entries are never removed, so this is only reachable if that changes; an
            // unshared entry still works, it just caches for this call alone.
            None => Arc::new(Entry::new(uri.clone())),
        }
    }

    /// A fetch in a task of its own, if none is in flight and `still_wanted` holds once the
    /// fetch slot is ours. The task ends on its own: the fetch is bounded by `limit`.
    fn spawn_fetch(
        &self,
        entry: &Arc<Entry>,
        limit: Duration,
        still_wanted: fn(Timing, &State, Instant) -> bool,
    ) {
        let Ok(slot) = Arc::clone(&entry.fetching).try_lock_owned() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (entry, tls, timing) = (Arc::clone(entry), Arc::clone(&self.tls), self.timing);
        runtime.spawn(async move {
            let _slot = slot;
            if still_wanted(timing, &entry.state.load(), Instant::now()) {
                // Failures are logged by `fetch` and kept in the entry for later requests.
                let _outcome = entry.fetch(limit, &tls).await;
            }
        });
    }
}

impl Entry {
    fn new(uri: Uri) -> Self {
        Self {
            uri,
            state: ArcSwap::from_pointee(State::default()),
            fetching: Arc::new(Mutex::new(())),
        }
    }

    /// One attempt; the caller holds `fetching`. Success replaces the keys; failure keeps any
    /// the entry had and is logged here, once.
    async fn fetch(
        &self,
        limit: Duration,
        tls: &TlsClient,
    ) -> Result<Arc<KeySet>, Arc<FetchError>> {
        let started = Instant::now();
        let result = fetch::fetch_jwks(&self.uri, limit, tls).await;
        let previous = self.state.load_full();
        match result {
            Ok(keys) => {
                let keys = Arc::new(keys);
                debug!(uri = %self.uri, keys = keys.len(), "JWKS fetched");
                self.state.store(Arc::new(State {
                    keys: Some(Arc::clone(&keys)),
                    fetched_at: Some(started),
                    attempted_at: Some(started),
                    error: None,
                }));
                Ok(keys)
            }
            Err(error) => {
                let error = Arc::new(error);
                warn!(
                    uri = %self.uri,
                    error = %mesh::errors::chain(error.as_ref()),
                    serving_stale_keys = previous.keys.is_some(),
                    "JWKS fetch failed"
                );
                self.state.store(Arc::new(State {
                    keys: previous.keys.clone(),
                    fetched_at: previous.fetched_at,
                    attempted_at: Some(started),
                    error: Some(Arc::clone(&error)),
                }));
                Err(error)
            }
        }
    }
}
