//! Where guests that turned out CPU-heavy continue: first on threads under
//! `SCHED_IDLE`, which run only on cores light requests leave free; when those
//! threads are starved (light load saturates the node), on lowered threads
//! that keep a bounded share, so heavy work still ends with its own outcome
//! (see [`crate::sched`]). A guest moves between the two at its next poll.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::Context as _;

use super::invoke::Outcome;
use crate::sched::IdleTier;

/// A guest's run, as the heavy threads take it.
pub(crate) type GuestRun = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// The two tiers of threads for heavy guests.
pub(crate) struct Heavy {
    idle: tokio::runtime::Runtime,
    lowered: tokio::runtime::Runtime,
    tier: Arc<IdleTier>,
    /// Guest runs moved here.
    moved: AtomicU64,
    /// Of those, the ones that moved on from the idle threads to the lowered
    /// ones, starved.
    rescued: Arc<AtomicU64>,
}

impl Heavy {
    /// Half the cores' worth of threads in each tier (at least one).
    pub(crate) fn start(tier: Arc<IdleTier>) -> anyhow::Result<Self> {
        let threads = (std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2) / 2).max(1);
        let entering = tier.clone();
        let idle = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("wharf-heavy-idle")
            .on_thread_start(move || entering.enter())
            .enable_all()
            .build()
            .context("failed to start the heavy-guest threads")?;
        let lowered = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("wharf-heavy")
            .on_thread_start(crate::sched::lower_current_thread)
            .enable_all()
            .build()
            .context("failed to start the heavy-guest threads")?;
        Ok(Self { idle, lowered, tier, moved: AtomicU64::new(0), rescued: Arc::default() })
    }

    /// Continue `run` on the heavy threads; its outcome arrives on the receiver.
    pub(crate) fn spawn(&self, run: GuestRun) -> tokio::sync::oneshot::Receiver<Outcome> {
        let (sender, outcome) = tokio::sync::oneshot::channel();
        self.moved.fetch_add(1, Ordering::Relaxed);
        if self.tier.starved() {
            self.lowered.spawn(Tiered { run: Some(run), sender: Some(sender), rescue: None });
        } else {
            let rescue = Rescue {
                tier: self.tier.clone(),
                lowered: self.lowered.handle().clone(),
                rescued: self.rescued.clone(),
            };
            self.idle.spawn(Tiered { run: Some(run), sender: Some(sender), rescue: Some(rescue) });
        }
        outcome
    }

    /// Guest runs moved to the heavy threads, and of those, the ones moved on
    /// from the idle threads to the lowered ones (starved there).
    pub(crate) fn counts(&self) -> (u64, u64) {
        (self.moved.load(Ordering::Relaxed), self.rescued.load(Ordering::Relaxed))
    }

    pub(crate) fn shutdown_background(self) {
        self.idle.shutdown_background();
        self.lowered.shutdown_background();
    }
}

/// What a guest on the idle threads needs to move on when they are starved.
struct Rescue {
    tier: Arc<IdleTier>,
    lowered: tokio::runtime::Handle,
    rescued: Arc<AtomicU64>,
}

/// A guest's run on one tier; on the idle one, it checks at every poll whether
/// to move on (guests yield at every epoch tick, so a starved thread that runs
/// at all passes its guests on within a tick).
struct Tiered {
    run: Option<GuestRun>,
    sender: Option<tokio::sync::oneshot::Sender<Outcome>>,
    rescue: Option<Rescue>,
}

impl Future for Tiered {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.rescue.as_ref().is_some_and(|r| r.tier.starved()) {
            if let Some(rescue) = this.rescue.take() {
                rescue.rescued.fetch_add(1, Ordering::Relaxed);
                rescue.lowered.spawn(Tiered { run: this.run.take(), sender: this.sender.take(), rescue: None });
                return Poll::Ready(());
            }
        }
        let Some(run) = this.run.as_mut() else {
            return Poll::Ready(());
        };
        let outcome = std::task::ready!(run.as_mut().poll(cx));
        this.run = None;
        if let Some(sender) = this.sender.take() {
            let _ = sender.send(outcome);
        }
        Poll::Ready(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Mutex;

    /// A run that notes the thread of each poll and yields until told to end.
    fn run(threads: Arc<Mutex<Vec<String>>>, end: Arc<AtomicBool>) -> GuestRun {
        Box::pin(async move {
            loop {
                threads.lock().unwrap().push(std::thread::current().name().unwrap_or_default().to_string());
                if end.load(Ordering::Relaxed) {
                    return Outcome { fuel: 7, failure: None };
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        })
    }

    /// Heavy threads with one run on them, and what the run is told and notes.
    #[allow(clippy::type_complexity)]
    fn one_heavy_run(
    ) -> (Arc<IdleTier>, Heavy, Arc<Mutex<Vec<String>>>, Arc<AtomicBool>, tokio::sync::oneshot::Receiver<Outcome>) {
        let tier = Arc::new(IdleTier::default());
        let heavy = Heavy::start(tier.clone()).unwrap();
        let (threads, end) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicBool::new(false)));
        let outcome = heavy.spawn(run(threads.clone(), end.clone()));
        (tier, heavy, threads, end, outcome)
    }

    #[tokio::test]
    async fn a_heavy_guest_moves_on_to_the_lowered_threads_when_the_idle_ones_are_starved() {
        let (tier, heavy, threads, end, outcome) = one_heavy_run();
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        // Linux gives any thread SCHED_IDLE and keeps per-thread statistics.
        assert!(!cfg!(target_os = "linux") || !tier.is_blind(), "the idle tier is blind here");
        tier.mark_starved();
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        end.store(true, Ordering::Relaxed);
        assert_eq!(outcome.await.unwrap().fuel, 7, "the outcome arrives from whichever tier finished it");
        let threads = threads.lock().unwrap().clone();
        assert_eq!(threads.last().map(String::as_str), Some("wharf-heavy"), "{threads:?}");
        if tier.is_blind() {
            assert!(threads.iter().all(|t| t == "wharf-heavy"), "{threads:?}");
            assert_eq!(heavy.counts(), (1, 0));
        } else {
            assert_eq!(threads.first().map(String::as_str), Some("wharf-heavy-idle"), "{threads:?}");
            assert_eq!(heavy.counts(), (1, 1), "moved once, rescued once");
            // While starved, the next heavy guest skips the idle threads.
            let (later, end) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicBool::new(true)));
            heavy.spawn(run(later.clone(), end)).await.unwrap();
            assert_eq!(*later.lock().unwrap(), ["wharf-heavy"]);
            assert_eq!(heavy.counts(), (2, 1));
        }
        heavy.shutdown_background();
    }

    #[tokio::test]
    async fn a_heavy_guest_stays_on_the_idle_threads_while_they_get_to_run() {
        let (tier, heavy, threads, end, outcome) = one_heavy_run();
        for _ in 0..4 {
            tokio::time::sleep(crate::sched::STARVATION_CHECK).await;
            tier.check();
        }
        end.store(true, Ordering::Relaxed);
        outcome.await.unwrap();
        let expected = if tier.is_blind() { "wharf-heavy" } else { "wharf-heavy-idle" };
        let threads = threads.lock().unwrap().clone();
        assert!(threads.iter().all(|t| t == expected), "{threads:?}");
        heavy.shutdown_background();
    }
}
