//! Waiting for a condition instead of sleeping: [`wait_until`] polls a check until it holds or a deadline
//! passes, so a test waits exactly as long as the system needs, on an idle or a busy machine.

use std::time::Duration;

use tokio::time::Instant;

/// How often [`wait_until`] asks again.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// What a check reports: `true` / `Some(value)` ends the wait.
pub(crate) trait Outcome {
    type Value;
    fn ready(self) -> Option<Self::Value>;
}

impl Outcome for bool {
    type Value = ();
    fn ready(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Outcome for Option<T> {
    type Value = T;
    fn ready(self) -> Option<T> {
        self
    }
}

/// Polls `check` every 50 ms until it reports ready (`true` or `Some`), at most for `within`; the check runs
/// once more at the deadline. `None` when it never did: the caller fails with what it was waiting for.
pub(crate) async fn wait_until<O: Outcome>(
    within: Duration,
    mut check: impl AsyncFnMut() -> O,
) -> Option<O::Value> {
    let deadline = Instant::now() + within;
    loop {
        let last_chance = Instant::now() >= deadline;
        if let Some(value) = check().await.ready() {
            return Some(value);
        }
        if last_chance {
            return None;
        }
        tokio::time::sleep_until((Instant::now() + POLL_EVERY).min(deadline)).await;
    }
}
