//! Store behaviour on tokio's paused clock: time only moves when every task is idle, so each
//! test waits for a condition (bounded by a timeout on the same clock) and the refresh and expiry
//! moments it observes are exact, not raced against a wall clock.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, timeout};

use super::*;
use crate::identity::{CLOCK_SKEW_ALLOWANCE, CaLimits, LocalCa, TrustDomain};

const TTL: Duration = Duration::from_secs(3600);
/// Upper bound for every wait; the paused clock jumps there only if the condition never holds.
const WAIT: Duration = Duration::from_secs(4 * 3600);

const ISSUE: u8 = 0;
const FAIL: u8 = 1;
const WRONG_IDENTITY: u8 = 2;

/// A real CA behind a switch that makes it fail or lie, counting fetches.
struct SwitchableCa {
    ca: LocalCa,
    mode: AtomicU8,
    fetches: watch::Sender<usize>,
}

impl CertificateProvider for SwitchableCa {
    fn fetch<'a>(&'a self, identity: &'a SpiffeId) -> ProviderFuture<'a> {
        Box::pin(async move {
            self.fetches.send_modify(|n| *n += 1);
            let provider = crate::tls::crypto_provider();
            match self.mode.load(Ordering::SeqCst) {
                FAIL => Err(FetchError::Unreachable("connection refused".into())),
                WRONG_IDENTITY => {
                    let other = SpiffeId::parse("spiffe://cluster.local/ns/other/sa/mallory")
                        .expect("valid literal");
                    self.ca
                        .issue_workload(&other, Some(TTL), &provider)
                        .map_err(|e| FetchError::Refused(e.to_string()))
                }
                _ => self
                    .ca
                    .issue_workload(identity, Some(TTL), &provider)
                    .map_err(|e| FetchError::Refused(e.to_string())),
            }
        })
    }
}

struct Fixture {
    ca: Arc<SwitchableCa>,
    fetches: watch::Receiver<usize>,
    store: CertStore,
    id: SpiffeId,
}

fn fixture(mode: u8) -> Fixture {
    let ca = LocalCa::generate_root("cluster.local", TTL * 48, CaLimits::default()).unwrap();
    let (tx, fetches) = watch::channel(0);
    let ca = Arc::new(SwitchableCa {
        ca,
        mode: AtomicU8::new(mode),
        fetches: tx,
    });
    let store = CertStore::new(ca.clone(), RefreshPolicy::default(), Handle::current());
    let td = TrustDomain::parse("cluster.local").unwrap();
    let id = SpiffeId::istio(&td, "storefront", "web").unwrap();
    Fixture {
        ca,
        fetches,
        store,
        id,
    }
}

impl Fixture {
    async fn wait_fetches(&mut self, n: usize) {
        timeout(WAIT, self.fetches.wait_for(|count| *count >= n))
            .await
            .unwrap_or_else(|_| panic!("fewer than {n} fetches within {WAIT:?}"))
            .unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn first_get_fetches_and_later_gets_reuse() {
    let mut f = fixture(ISSUE);
    let a = f.store.get(&f.id).await.unwrap();
    let b = f.store.get(&f.id).await.unwrap();
    assert_eq!(a.identity(), &f.id);
    assert_eq!(a.leaf().serial, b.leaf().serial);
    assert_eq!(*f.fetches.borrow_and_update(), 1);
}

#[tokio::test(start_paused = true)]
async fn refreshes_near_half_life_with_a_new_key() {
    let mut f = fixture(ISSUE);
    let start = Instant::now();
    let first = f.store.get(&f.id).await.unwrap();
    f.wait_fetches(2).await;
    let waited = start.elapsed();
    // Lifetime is TTL plus the CA's two-minute backdating; refresh comes at half of that, minus
    // up to 5 % of it as jitter, measured from notBefore (two minutes ago).
    let lifetime = TTL + CLOCK_SKEW_ALLOWANCE;
    let latest = lifetime / 2 - CLOCK_SKEW_ALLOWANCE;
    let earliest = latest - lifetime.mul_f64(0.05);
    assert!(
        waited >= earliest - Duration::from_secs(2) && waited <= latest + Duration::from_secs(2),
        "refreshed after {waited:?}, expected between {earliest:?} and {latest:?}"
    );
    let second = f.store.get(&f.id).await.unwrap();
    assert_ne!(first.leaf().serial, second.leaf().serial);
    assert_ne!(
        first.certified_key().key.public_key(),
        second.certified_key().key.public_key(),
        "a refresh must use a new key"
    );
}

#[tokio::test(start_paused = true)]
async fn failed_refresh_keeps_serving_then_never_serves_expired() {
    let mut f = fixture(ISSUE);
    let start = Instant::now();
    let held = f.store.get(&f.id).await.unwrap();
    f.ca.mode.store(FAIL, Ordering::SeqCst);

    f.wait_fetches(3).await;
    assert!(start.elapsed() < TTL, "two refreshes failed before expiry");
    let served = f.store.get(&f.id).await.unwrap();
    assert_eq!(
        served.leaf().serial,
        held.leaf().serial,
        "old certificate kept"
    );

    let mut state = f.store.watch(&f.id);
    timeout(
        WAIT,
        state.wait_for(|s| matches!(s, CertState::Unavailable(_))),
    )
    .await
    .expect("the store publishes the lapse")
    .unwrap();
    let lapsed_after = start.elapsed();
    assert!(
        lapsed_after >= TTL - Duration::from_secs(2),
        "certificate dropped after {lapsed_after:?}, before it expired"
    );
    match f.store.get(&f.id).await {
        Err(StoreError::Unavailable { cause, .. }) => {
            assert_eq!(*cause, FetchError::Unreachable("connection refused".into()));
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }

    // The CA comes back: the next retry restores service.
    f.ca.mode.store(ISSUE, Ordering::SeqCst);
    timeout(
        WAIT,
        state.wait_for(|s| matches!(s, CertState::Available { .. })),
    )
    .await
    .expect("recovers once the CA answers")
    .unwrap();
    assert_ne!(
        f.store.get(&f.id).await.unwrap().leaf().serial,
        held.leaf().serial
    );
}

#[tokio::test(start_paused = true)]
async fn first_fetch_failure_is_reported_and_retried_with_backoff() {
    let mut f = fixture(FAIL);
    let start = Instant::now();
    assert!(matches!(
        f.store.get(&f.id).await,
        Err(StoreError::Unavailable { .. })
    ));
    f.wait_fetches(3).await;
    // Retries after ~1 s and ~2 s (±20 %).
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(2400) && waited <= Duration::from_millis(3600),
        "third attempt after {waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn certificate_for_another_identity_is_refused() {
    let f = fixture(WRONG_IDENTITY);
    match f.store.get(&f.id).await {
        Err(StoreError::Unavailable { cause, .. }) => match &*cause {
            FetchError::WrongIdentity { got, want } => {
                assert_eq!(want, &f.id);
                assert_eq!(
                    got.to_string(),
                    "spiffe://cluster.local/ns/other/sa/mallory"
                );
            }
            other => panic!("expected WrongIdentity, got {other:?}"),
        },
        other => panic!("expected WrongIdentity, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn forget_stops_refreshing() {
    let mut f = fixture(ISSUE);
    f.store.get(&f.id).await.unwrap();
    f.store.forget(&f.id);
    assert!(f.store.states().is_empty());
    // Past two refresh points: no further fetch happened.
    tokio::time::sleep(TTL * 2).await;
    assert_eq!(*f.fetches.borrow_and_update(), 1);
}

#[test]
fn expired_state_is_never_served() {
    let ca = LocalCa::generate_root("cluster.local", TTL, CaLimits::default()).unwrap();
    let id = SpiffeId::parse("spiffe://cluster.local/ns/a/sa/b").unwrap();
    let cert = Arc::new(
        ca.issue_workload(&id, None, &crate::tls::crypto_provider())
            .unwrap(),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let expires_at = Instant::now() + Duration::from_secs(10);
        let state = CertState::Available { cert, expires_at };
        assert!(serve(&id, state.clone(), expires_at - Duration::from_secs(1)).is_ok());
        assert_eq!(
            serve(&id, state.clone(), expires_at).unwrap_err(),
            StoreError::Expired(id.clone())
        );
    });
}
