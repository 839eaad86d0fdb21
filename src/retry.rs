//! One overall deadline, and jittered exponential backoff for transient errors inside it.

use crate::error::{Class, FetchError};
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// First backoff step; doubles per attempt up to [`MAX_BACKOFF`].
pub const BASE_BACKOFF: Duration = Duration::from_millis(250);
/// Longest pause between two attempts (before jitter).
pub const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// Time kept for a last attempt: a backoff is shortened rather than sleep into it.
pub const FINAL_ATTEMPT: Duration = Duration::from_secs(1);

/// The instant by which the whole run must have finished.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    end: Instant,
    total: Duration,
}

impl Deadline {
    pub fn after(total: Duration) -> Self {
        Deadline {
            end: Instant::now() + total,
            total,
        }
    }

    pub fn remaining(&self) -> Duration {
        self.end.saturating_duration_since(Instant::now())
    }

    pub fn total(&self) -> Duration {
        self.total
    }
}

/// Why [`retry`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    /// A permanent error: no retry was attempted after it.
    #[error("{0}")]
    Permanent(FetchError),
    /// The deadline ran out while errors were still transient.
    #[error(
        "deadline of {}s exceeded after {attempts} attempt(s); last error: {last}",
        total.as_secs()
    )]
    Deadline {
        attempts: u32,
        total: Duration,
        last: String,
    },
}

/// The pause before attempt `attempt + 1`: exponential, capped, with "full jitter" (a uniformly
/// random point of the whole step, so that nodes throttled together spread over it rather than
/// return together), and never shorter than a server's own hint.
pub fn backoff(attempt: u32, hint: Option<Duration>) -> Duration {
    let exp = BASE_BACKOFF.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let step = exp.min(MAX_BACKOFF);
    let jittered = step.mul_f64(fastrand::f64());
    match hint {
        Some(h) => jittered.max(h.min(MAX_BACKOFF * 4)),
        None => jittered,
    }
}

/// Runs `op` until it succeeds, fails permanently, or `deadline` passes. Each attempt is itself
/// cut off at the deadline, so a hung connection cannot outlive it. Each transient failure is a
/// warning.
pub async fn retry<T, F, Fut>(what: &str, deadline: &Deadline, op: F) -> Result<T, RetryError>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, FetchError>>,
{
    retry_observed(what, deadline, None, op).await
}

/// What [`retry_observed`] hands each transient failure to, with the pause before the next attempt.
pub type Observer<'a> = &'a (dyn Fn(&FetchError, Duration) + Sync);

/// [`retry`], with each transient failure logged at debug and handed to `observe` with the pause
/// before the next attempt (which logs what a reader needs: see `crate::runner`'s backend
/// health). `None`: each is a warning.
pub async fn retry_observed<T, F, Fut>(
    what: &str,
    deadline: &Deadline,
    observe: Option<Observer<'_>>,
    mut op: F,
) -> Result<T, RetryError>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, FetchError>>,
{
    let mut attempt = 0u32;
    let mut last = String::from("no attempt was made");
    let mut last_chance_taken = false;
    // Without an observer each cause is a warning once; its repeats are debug lines (-v).
    let mut warned: Option<String> = None;
    loop {
        let remaining = deadline.remaining();
        if remaining.is_zero() {
            return Err(RetryError::Deadline {
                attempts: attempt,
                total: deadline.total(),
                last,
            });
        }
        attempt += 1;
        log::debug!("{what}: attempt {attempt}");
        let err = match tokio::time::timeout(remaining, op(attempt)).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => e,
            Err(_) => {
                // The cause worth reporting is what the earlier attempts ran into, not the cut.
                let cut = "the last attempt was cut off by the deadline";
                let last = if attempt == 1 {
                    format!("{cut} (no answer within {} s)", deadline.total().as_secs())
                } else {
                    format!("{last}; {cut}")
                };
                return Err(RetryError::Deadline {
                    attempts: attempt,
                    total: deadline.total(),
                    last,
                });
            }
        };
        if err.class == Class::Permanent {
            return Err(RetryError::Permanent(err));
        }
        last = err.message.clone();
        let remaining = deadline.remaining();
        let mut pause = backoff(attempt, err.retry_after);
        if pause + FINAL_ATTEMPT > remaining {
            // No room for a full backoff: sleep only until FINAL_ATTEMPT before the deadline and
            // try once more, then give up.
            if last_chance_taken || remaining < FINAL_ATTEMPT {
                return Err(RetryError::Deadline {
                    attempts: attempt,
                    total: deadline.total(),
                    last,
                });
            }
            last_chance_taken = true;
            pause = remaining - FINAL_ATTEMPT;
        }
        let line = format!(
            "{what}: {last} (attempt {attempt}, transient); retrying in {} ms",
            pause.as_millis()
        );
        match observe {
            Some(observe) => {
                log::debug!("{line}");
                observe(&err, pause);
            }
            None if warned.as_deref() == Some(last.as_str()) => {
                log::debug!("{line}");
            }
            None => {
                log::warn!(
                    "{line}{}",
                    if warned.is_none() {
                        "; the same cause again is logged only with -v"
                    } else {
                        ""
                    }
                );
                warned = Some(last.clone());
            }
        }
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let (mut low, mut high) = (0, 0);
        for _ in 0..400 {
            let b1 = backoff(1, None);
            assert!(b1 <= BASE_BACKOFF, "{b1:?}");
            let b3 = backoff(3, None);
            assert!(b3 <= BASE_BACKOFF * 4, "{b3:?}");
            let b30 = backoff(30, None);
            assert!(b30 <= MAX_BACKOFF, "{b30:?}");
            // Full jitter: the whole step is used, its lower half included.
            if b30 < MAX_BACKOFF / 4 {
                low += 1;
            }
            if b30 > MAX_BACKOFF * 3 / 4 {
                high += 1;
            }
        }
        // Each quarter holds about 100 of 400 draws; 40 is more than six deviations away.
        assert!(low > 40 && high > 40, "low {low}, high {high}");
        for _ in 0..50 {
            assert!(backoff(1, Some(Duration::from_secs(3))) >= Duration::from_secs(3));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_until_success() {
        let calls = Cell::new(0);
        let d = Deadline::after(Duration::from_secs(60));
        let r = retry("t", &d, |_| {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move {
                if n < 4 {
                    Err(FetchError::transient("503"))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(r.unwrap(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_not_retried() {
        let calls = Cell::new(0);
        let d = Deadline::after(Duration::from_secs(60));
        let r: Result<(), _> = retry("t", &d, |_| {
            calls.set(calls.get() + 1);
            async { Err(FetchError::permanent("denied")) }
        })
        .await;
        assert!(matches!(r, Err(RetryError::Permanent(_))));
        assert_eq!(calls.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_bounds_transient_errors_and_hung_attempts() {
        let d = Deadline::after(Duration::from_secs(10));
        let start = Instant::now();
        let r: Result<(), _> = retry("t", &d, |_| async {
            Err(FetchError::transient("connection refused"))
        })
        .await;
        match r {
            Err(RetryError::Deadline { last, attempts, .. }) => {
                assert_eq!(last, "connection refused");
                assert!(attempts > 2);
            }
            other => panic!("{other:?}"),
        }
        assert!(start.elapsed() <= Duration::from_secs(10));

        let d = Deadline::after(Duration::from_secs(5));
        let r: Result<(), _> = retry("t", &d, |_| std::future::pending()).await;
        assert!(matches!(r, Err(RetryError::Deadline { .. })));
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_backoff_still_leaves_a_last_attempt() {
        // A server asks for 60 s but the deadline is 10 s away: one more try just before it.
        let calls = Cell::new(0);
        let d = Deadline::after(Duration::from_secs(10));
        let start = Instant::now();
        let r = retry("t", &d, |_| {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move {
                if n == 1 {
                    Err(FetchError {
                        retry_after: Some(Duration::from_secs(60)),
                        ..FetchError::transient("429")
                    })
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(r.unwrap(), 2);
        assert!(start.elapsed() >= Duration::from_secs(8));
    }
}
