//! The session workers: one thread per core, each running tokio's current-thread scheduler, where client
//! sessions live from accept to goodbye (docs/architecture.md, "Threads").
//!
//! A session never moves between threads, so its wake-ups never cross one: the thread that reads a client's
//! query is the one that sends it on and reads the node's answer, as in pgbouncer's single loop, and the
//! process still uses every core it is given. The accept loop hands each new client to the worker with the
//! fewest live sessions. Node connections come from pools shared by all workers; one that was last used on
//! another worker is moved to this worker's event loop when it is checked out
//! ([`crate::backend::tls::NodeStream::move_here`]), so its readiness is not reported by another thread.

use std::cell::Cell;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::oneshot;

thread_local! {
    /// Which worker runs on this thread; None on any other thread.
    static CURRENT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The worker running on the calling thread, if any.
pub fn current() -> Option<usize> {
    CURRENT.with(Cell::get)
}

/// Why the workers could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot start session worker {index}: {source}")]
    Start { index: usize, source: std::io::Error },
}

struct Worker {
    handle: tokio::runtime::Handle,
    /// Live sessions (and other tasks spawned through [`Workers::spawn`]) on this worker.
    load: Arc<AtomicUsize>,
    /// Dropping it ends the worker's thread, and with it whatever still runs there.
    _stop: oneshot::Sender<()>,
}

/// The session workers. Dropping this stops them.
pub struct Workers {
    workers: Vec<Worker>,
    /// Where the search for the least loaded worker starts, so that ties are spread.
    next: AtomicUsize,
}

impl Workers {
    /// Starts `count` workers (0: [`default_count`]), each on its own thread with `stack_size` bytes of stack.
    pub fn start(count: usize, stack_size: usize) -> Result<Workers, WorkerError> {
        let count = if count == 0 {
            default_count(std::thread::available_parallelism().map_or(1, usize::from))
        } else {
            count
        };
        let mut workers = Vec::with_capacity(count);
        for index in 0..count {
            let start = |source| WorkerError::Start { index, source };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(start)?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            // Short: Linux keeps 15 bytes of a thread's name (top, ps -L and /proc show it).
            std::thread::Builder::new()
                .name(format!("pgfleet-wk-{index}"))
                .stack_size(stack_size)
                .spawn(move || {
                    CURRENT.with(|c| c.set(Some(index)));
                    // Runs the worker's tasks until the sender is dropped; the runtime, and every task still
                    // on it, goes with this thread.
                    let _ = runtime.block_on(stopped);
                })
                .map_err(start)?;
            workers.push(Worker {
                handle,
                load: Arc::new(AtomicUsize::new(0)),
                _stop: stop,
            });
        }
        Ok(Workers {
            workers,
            next: AtomicUsize::new(0),
        })
    }

    /// How many workers run.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Whether there are none (never, once started).
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Runs `task` on the worker with the fewest live tasks. The future is built there (`make` runs on the
    /// worker's thread), so the sockets it registers belong to that worker's event loop.
    pub fn spawn<F, Fut>(&self, make: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let loads: Vec<usize> = self
            .workers
            .iter()
            .map(|w| w.load.load(Ordering::Relaxed))
            .collect();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let index = least_loaded(&loads, start);
        let worker = &self.workers[index];
        let load = worker.load.clone();
        load.fetch_add(1, Ordering::Relaxed);
        let guard = LoadGuard(load);
        // `make` runs inside the task, on the worker's thread.
        worker.handle.spawn(async move {
            let _guard = guard;
            make().await;
        });
    }
}

/// How many workers `worker_threads = 0` starts with `cores` usable cores: half of them, at least one. A
/// worker that has sessions but not enough of them to stay busy sleeps and wakes for every request, and on a
/// machine whose cores the servers and clients use too, those switches cost more than the worker brings:
/// measured on 2 cores (docs/performance.md), two workers spent 3 µs and 0.2 context switches more per
/// transaction than one, for less throughput. pgfleet's own work per transaction is a fraction of the
/// server's, so half the cores leaves room; a machine of pgfleet's own can set `worker_threads` to its cores.
fn default_count(cores: usize) -> usize {
    cores.div_ceil(2).max(1)
}

/// Takes one off a worker's load however its task ends (finished, or dropped with the runtime).
struct LoadGuard(Arc<AtomicUsize>);

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The index of the smallest load, searching from `start` (modulo the length) so that equal loads take
/// turns.
fn least_loaded(loads: &[usize], start: usize) -> usize {
    let n = loads.len().max(1);
    (0..n)
        .map(|i| (start + i) % n)
        .min_by_key(|&i| loads.get(i).copied().unwrap_or(usize::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_half_the_cores_and_at_least_one() {
        for (cores, workers) in [(0, 1), (1, 1), (2, 1), (3, 2), (4, 2), (8, 4), (64, 32)] {
            assert_eq!(default_count(cores), workers, "{cores} cores");
        }
    }

    #[test]
    fn the_least_loaded_worker_wins_and_ties_take_turns() {
        // (loads, start, chosen)
        for (loads, start, chosen) in [
            (&[0, 0][..], 0, 0),
            (&[0, 0][..], 1, 1),
            (&[0, 0][..], 2, 0),
            (&[3, 1][..], 0, 1),
            (&[1, 3][..], 1, 0),
            (&[2, 1, 1][..], 0, 1),
            (&[2, 1, 1][..], 2, 2),
            (&[5][..], 7, 0),
        ] {
            assert_eq!(least_loaded(loads, start), chosen, "loads {loads:?} from {start}");
        }
    }

    #[test]
    fn tasks_run_on_their_worker_and_their_load_is_counted_until_they_end() {
        let workers = Workers::start(2, 1 << 20).expect("start workers");
        assert_eq!(workers.len(), 2);
        let (tx, rx) = std::sync::mpsc::channel();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let first = tx.clone();
        workers.spawn(move || async move {
            let _ = first.send(current());
            let _ = released.await;
        });
        let on_first = rx.recv().expect("first task ran");
        // The busy worker has one task: the next goes to the other one.
        workers.spawn(move || async move {
            let _ = tx.send(current());
        });
        let on_second = rx.recv().expect("second task ran");
        assert!(on_first.is_some() && on_second.is_some());
        assert_ne!(on_first, on_second, "the second task went to the idle worker");
        let _ = release.send(());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while workers.workers.iter().any(|w| w.load.load(Ordering::Relaxed) > 0) {
            assert!(
                std::time::Instant::now() < deadline,
                "loads never went back to zero"
            );
            std::thread::yield_now();
        }
        assert_eq!(current(), None, "the test thread is no worker");
    }
}
