//! Worker threads for the request-serving listeners (proxy and authz roles): each worker is its
//! own current-thread runtime with its own accept loop on the shared listening socket, so a
//! connection lives on one thread from accept to close, as in nginx's worker model.
//!
//! One multi-thread runtime instead moved tasks between threads (work stealing) and woke idle
//! threads for every new task; with two workers on two cores that cost more than the second core
//! gave (docs/performance.md, "Two workers"). Here the listening socket is registered with every
//! worker: a new connection wakes each worker that is waiting in its poll, the first to accept
//! takes it and the others find nothing (one wasted wake-up per waiting worker and connection;
//! `SO_REUSEPORT` sockets per worker would avoid it, at the cost of one accept queue per worker
//! that a busy worker leaves unserved). A worker busy serving does not accept. Each worker also
//! has its own upstream connection pool ([`index`] selects it), so a request never hands its
//! upstream exchange to another thread.

use std::cell::Cell;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The index of the worker this thread is; 0 on any other thread (the control-plane runtime,
/// tests). Selects the worker's own upstream pool.
pub fn index() -> usize {
    INDEX.with(Cell::get)
}

/// Why the workers could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot start worker thread {index}")]
    Thread {
        index: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot build the runtime of worker {index}")]
    Runtime {
        index: usize,
        #[source]
        source: std::io::Error,
    },
}

/// Running workers. Dropping this stops them: each worker's runtime is dropped on its own
/// thread, which cancels whatever its tasks had left (the caller drains connections first).
pub struct Workers {
    handles: Vec<Handle>,
    /// Dropping a sender ends its worker's `block_on`.
    _stops: Vec<oneshot::Sender<()>>,
}

impl Workers {
    /// Starts `n` worker threads (`cae-worker-<i>`), each running a current-thread runtime until
    /// this value is dropped.
    pub async fn start(n: usize) -> Result<Workers, WorkerError> {
        let mut handles = Vec::with_capacity(n);
        let mut stops = Vec::with_capacity(n);
        for index in 0..n {
            let (ready_tx, ready_rx) = oneshot::channel();
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("cae-worker-{index}"))
                .spawn(move || {
                    INDEX.with(|c| c.set(index));
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(r) => r,
                        Err(source) => {
                            let _ = ready_tx.send(Err(WorkerError::Runtime { index, source }));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(runtime.handle().clone()));
                    runtime.block_on(async {
                        let _ = stop_rx.await;
                    });
                })
                .map_err(|source| WorkerError::Thread { index, source })?;
            let handle = ready_rx.await.map_err(|_| WorkerError::Runtime {
                index,
                source: std::io::Error::other("the worker thread ended while starting"),
            })??;
            handles.push(handle);
            stops.push(stop_tx);
        }
        Ok(Workers {
            handles,
            _stops: stops,
        })
    }

    /// The workers' runtimes, in index order.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_worker_runs_its_tasks_on_its_own_thread_with_its_index_and_stops_when_dropped() {
        let workers = Workers::start(2).await.expect("start");
        let mut seen = Vec::new();
        for h in workers.handles() {
            let (tx, rx) = oneshot::channel();
            h.spawn(async move {
                let name = std::thread::current().name().map(str::to_string);
                let _ = tx.send((index(), name));
            });
            seen.push(rx.await.expect("the task ran"));
        }
        assert_eq!(
            seen,
            [
                (0, Some("cae-worker-0".to_string())),
                (1, Some("cae-worker-1".to_string()))
            ]
        );
        let (tx, rx) = oneshot::channel::<()>();
        let pending = workers.handles()[1].spawn(async move {
            let _keep = tx;
            std::future::pending::<()>().await
        });
        drop(workers);
        // The runtime went with its thread: the pending task was cancelled, its sender dropped.
        assert!(rx.await.is_err());
        assert!(pending.await.is_err_and(|e| e.is_cancelled()));
        assert_eq!(index(), 0, "other threads are not workers");
    }
}
