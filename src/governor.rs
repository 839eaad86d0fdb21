//! How fast one run sends requests to one backend service: at most `concurrency` at once, fewer
//! when the service throttles.
//!
//! A scale-out boots many nodes in the same instant, all in one account whose quota is shared.
//! Retrying each throttled request on its own keeps every node sending at full concurrency, and
//! most of what reaches the service is then refused again (measured by bench/fleet.sh). Instead,
//! each backend of a run has a governor, the congestion control of TCP applied to requests:
//!
//! * **slow start**: the window (requests allowed in flight) starts at [`INITIAL_WINDOW`] and
//!   grows by one per success, so a node doubles its rate every round trip up to `concurrency`
//!   (an unthrottled run reaches full concurrency after a few round trips);
//! * **multiplicative decrease**: a throttled answer halves the window (once per pause, not once
//!   per answer of the same burst) and pauses every request of the backend for a fully jittered,
//!   growing time, never shorter than a `Retry-After`;
//! * **additive increase**: after a throttle the window grows by one per window's worth of
//!   successes, and the pause level falls by one per [`SUCCESSES_PER_LEVEL`] successes, so
//!   the fleet settles where few requests are refused.

use crate::retry::backoff;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The window a run starts with.
pub const INITIAL_WINDOW: usize = 4;
/// Successes that lower the pause level by one (the level rises by one per throttle).
pub const SUCCESSES_PER_LEVEL: u32 = 16;
/// The highest pause level (its step is [`crate::retry::MAX_BACKOFF`]).
const MAX_LEVEL: u32 = 8;

pub struct Governor {
    max: usize,
    state: Mutex<State>,
    freed: Notify,
}

struct State {
    window: f64,
    slow_start: bool,
    in_flight: usize,
    paused_until: Option<Instant>,
    level: u32,
    successes: u32,
    throttles: u64,
}

/// A request admitted: dropping it lets the next one in.
pub struct Permit<'a>(&'a Governor);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.0
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .in_flight -= 1;
        self.0.freed.notify_waiters();
    }
}

impl Governor {
    /// `max`: the run's `concurrency`.
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        Governor {
            max,
            state: Mutex::new(State {
                window: INITIAL_WINDOW.min(max) as f64,
                slow_start: true,
                in_flight: 0,
                paused_until: None,
                level: 0,
                successes: 0,
                throttles: 0,
            }),
            freed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until a request may be sent: no pause in force and room in the window.
    pub async fn admit(&self) -> Permit<'_> {
        loop {
            // Registered before the state is looked at, so a permit dropped in between wakes it.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let pause = {
                let mut st = self.lock();
                match st.paused_until {
                    Some(until) if until > Instant::now() => Some(until),
                    _ => {
                        if st.in_flight < (st.window as usize).max(1) {
                            st.in_flight += 1;
                            return Permit(self);
                        }
                        None
                    }
                }
            };
            match pause {
                Some(until) => tokio::time::sleep_until(until).await,
                None => freed.await,
            }
        }
    }

    /// The service answered: grow the window.
    pub fn succeeded(&self) {
        let mut st = self.lock();
        let max = self.max as f64;
        if st.slow_start {
            st.window = (st.window + 1.0).min(max);
        } else {
            st.window = (st.window + 1.0 / st.window).min(max);
        }
        st.successes += 1;
        if st.successes >= SUCCESSES_PER_LEVEL {
            st.successes = 0;
            st.level = st.level.saturating_sub(1);
        }
        drop(st);
        self.freed.notify_waiters();
    }

    /// The service throttled a request: halve the window and pause the backend.
    pub fn throttled(&self, hint: Option<Duration>) {
        let mut st = self.lock();
        let now = Instant::now();
        st.throttles += 1;
        if st.paused_until.is_some_and(|u| u > now) {
            // Answers to requests sent before the pause: the same congestion, already counted.
            return;
        }
        st.slow_start = false;
        st.window = (st.window / 2.0).max(1.0);
        st.level = (st.level + 1).min(MAX_LEVEL);
        st.successes = 0;
        st.paused_until = Some(now + backoff(st.level, hint));
    }

    /// Throttled answers so far.
    pub fn throttles(&self) -> u64 {
        self.lock().throttles
    }

    /// The current window (for tests and logs).
    pub fn window(&self) -> f64 {
        self.lock().window
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn slow_start_then_the_window_is_capped_at_concurrency() {
        let g = Governor::new(16);
        assert_eq!(g.window(), INITIAL_WINDOW as f64);
        for _ in 0..40 {
            let _p = g.admit().await;
            g.succeeded();
        }
        assert_eq!(g.window(), 16.0);
        let g1 = Governor::new(1);
        assert_eq!(g1.window(), 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_in_flight_than_the_window() {
        let g = Arc::new(Governor::new(8));
        let now = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (g, now, peak) = (g.clone(), now.clone(), peak.clone());
            tasks.push(tokio::spawn(async move {
                let _p = g.admit().await;
                let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                now.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // No success was reported: the window stayed at its initial size.
        assert_eq!(peak.load(Ordering::SeqCst), INITIAL_WINDOW);
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttle_halves_the_window_once_and_pauses_every_request() {
        let g = Governor::new(16);
        for _ in 0..12 {
            g.succeeded();
        }
        assert_eq!(g.window(), 16.0);
        let hint = Duration::from_secs(2);
        g.throttled(Some(hint));
        // More answers of the same burst: counted, but the window is halved once.
        g.throttled(Some(hint));
        g.throttled(Some(hint));
        assert_eq!(g.window(), 8.0);
        assert_eq!(g.throttles(), 3);
        let start = Instant::now();
        let _p = g.admit().await;
        assert!(start.elapsed() >= hint, "{:?}", start.elapsed());
        // Congestion avoidance: one more per window's worth of successes.
        for _ in 0..8 {
            g.succeeded();
        }
        assert!((g.window() - 9.0).abs() < 0.1, "{}", g.window());
    }

    #[tokio::test(start_paused = true)]
    async fn the_pause_grows_with_throttles_and_never_drops_below_one_request() {
        let g = Governor::new(4);
        for _ in 0..10 {
            g.throttled(None);
            let _p = g.admit().await; // waits out the pause
        }
        assert_eq!(g.window(), 1.0);
        let _a = g.admit().await;
        // A second request waits for the first.
        let second = tokio::time::timeout(Duration::from_secs(60), g.admit()).await;
        assert!(second.is_err());
    }
}
