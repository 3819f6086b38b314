//! Requests to the database that wait together share one statement.
//!
//! Most of what PostgreSQL spends on a short statement is the statement's, not its
//! rows': the round trip, parsing and binding, starting the executor, the transaction.
//! So a [`Gather`] queues each request, runs at most a fixed number of statements at a
//! time, and each statement takes every request queued when it starts. A request made
//! while a statement is free goes at once, alone; under load, those that queued behind
//! a running statement share the next. A statement starts after every request it takes
//! was made, so each answer is one that request would have had alone.
//!
//! The statements run on tasks of their own, not on the requests': a request that goes
//! away (its client hung up) cannot cancel the others' statement.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

/// One kind of statement that requests share.
pub(crate) trait Statement: Send + 'static {
    type Request: Send + 'static;
    type Answer: Send + 'static;

    /// How many of the requests waiting, in their order, the next statement takes: a
    /// bound on its size. At least one is taken whatever this says.
    fn take(waiting: &[Waiting<Self>]) -> usize;

    /// Runs one statement for `taken`, and answers each of them.
    fn run(&self, taken: Vec<Waiting<Self>>) -> impl Future<Output = ()> + Send;
}

/// A request waiting for a statement, and where its answer goes.
pub(crate) struct Waiting<S: Statement + ?Sized> {
    pub(crate) request: S::Request,
    pub(crate) answer: oneshot::Sender<S::Answer>,
}

/// The requests of one kind waiting for a statement, and the statements running.
pub(crate) struct Gather<S: Statement> {
    queue: Mutex<Queue<S>>,
    statements_at_once: usize,
}

struct Queue<S: Statement> {
    waiting: Vec<Waiting<S>>,
    statements: usize,
}

impl<S: Statement> Gather<S> {
    /// At most `statements_at_once` (at least one) statements run at a time. Fewer leave
    /// more requests to share each; more let a request start sooner.
    pub(crate) fn new(statements_at_once: usize) -> Self {
        Self {
            queue: Mutex::new(Queue {
                waiting: Vec::new(),
                statements: 0,
            }),
            statements_at_once: statements_at_once.max(1),
        }
    }

    fn queue(&self) -> MutexGuard<'_, Queue<S>> {
        // Held only to push, take or count: a panic cannot leave it half done.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many statements run now.
    #[cfg(test)]
    pub(crate) fn statements_running(&self) -> usize {
        self.queue().statements
    }

    /// Queues `request` and answers what its statement answered it. When a statement is
    /// free, `statement` runs on a task of its own until no request waits. `None`: the
    /// statement's task ended without answering (it panicked, or its runtime shut
    /// down), after its statement was perhaps sent.
    pub(crate) async fn submit(
        self: &Arc<Self>,
        request: S::Request,
        statement: S,
    ) -> Option<S::Answer> {
        let (answer, answered) = oneshot::channel();
        let start_statement = {
            let mut queue = self.queue();
            queue.waiting.push(Waiting { request, answer });
            let free = queue.statements < self.statements_at_once;
            if free {
                queue.statements += 1;
            }
            free
        };
        if start_statement {
            tokio::spawn(Arc::clone(self).run(statement));
        }
        answered.await.ok()
    }

    /// Runs statements until no request waits.
    async fn run(self: Arc<Self>, statement: S) {
        let mut running = RunningStatement(Some(&self));
        loop {
            let taken = {
                let mut queue = self.queue();
                if queue.waiting.is_empty() {
                    // Counted down under the same lock the requests push under: none is
                    // left waiting for a statement that has ended.
                    queue.statements -= 1;
                    running.0 = None;
                    return;
                }
                let count = S::take(&queue.waiting).clamp(1, queue.waiting.len());
                queue.waiting.drain(..count).collect::<Vec<_>>()
            };
            statement.run(taken).await;
        }
    }
}

/// Counts a statement's task out should it panic.
struct RunningStatement<'a, S: Statement>(Option<&'a Gather<S>>);

impl<S: Statement> Drop for RunningStatement<'_, S> {
    fn drop(&mut self) {
        if let Some(gather) = self.0 {
            gather.queue().statements -= 1;
        }
    }
}

impl<S: Statement> std::fmt::Debug for Gather<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let queue = self.queue();
        f.debug_struct("Gather")
            .field("waiting", &queue.waiting.len())
            .field("statements", &queue.statements)
            .finish()
    }
}
