//! Shutdown passed in from the binary and fanned out to every task, and the tasks joined
//! before a service's `run` returns.

use std::future::Future;

use tokio::sync::watch;
use tokio::task::JoinSet;

/// Hears that the service is stopping; cheap to clone into every task.
#[derive(Debug, Clone)]
pub struct Shutdown {
    stopping: watch::Receiver<bool>,
}

impl Shutdown {
    /// Whether the service is stopping.
    pub fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Resolve once the service is stopping (at once if it already is).
    pub async fn wait(mut self) {
        // An error means the sender is gone: the service is going away either way.
        let _ = self.stopping.wait_for(|stopping| *stopping).await;
    }

    /// The underlying receiver, for `select!` loops that want `changed()`.
    pub fn receiver(&self) -> watch::Receiver<bool> {
        self.stopping.clone()
    }
}

/// A service's spawned tasks and its stop signal: [`Tasks::stop`] tells every task and waits
/// for all of them.
#[derive(Debug)]
pub struct Tasks {
    tell: watch::Sender<bool>,
    running: JoinSet<()>,
}

impl Default for Tasks {
    fn default() -> Self {
        Self::new()
    }
}

impl Tasks {
    /// No tasks yet.
    pub fn new() -> Self {
        Self {
            tell: watch::channel(false).0,
            running: JoinSet::new(),
        }
    }

    /// What tasks listen to.
    pub fn shutdown(&self) -> Shutdown {
        Shutdown {
            stopping: self.tell.subscribe(),
        }
    }

    /// Run `task` until it returns; it should return soon after [`Tasks::shutdown`] says so.
    pub fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.running.spawn(task);
    }

    /// Tell every task to stop.
    pub fn tell_stop(&self) {
        self.tell.send_replace(true);
    }

    /// Tell every task to stop and wait for all of them; a task that panicked is logged.
    pub async fn stop(mut self) {
        self.tell_stop();
        while let Some(done) = self.running.join_next().await {
            if let Err(e) = done {
                tracing::error!(cause = %e, "a task ended abnormally");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_waits_for_every_task() {
        let mut tasks = Tasks::new();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for _ in 0..3 {
            let (shutdown, done) = (tasks.shutdown(), done.clone());
            tasks.spawn(async move {
                shutdown.wait().await;
                tokio::task::yield_now().await;
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
        tasks.stop().await;
        assert_eq!(done.load(std::sync::atomic::Ordering::SeqCst), 3);
    }
}
