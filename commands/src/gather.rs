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

    /// How many statements of this kind may run at once (at least one). Fewer leave more
    /// requests to share each; more let a request start sooner.
    const AT_ONCE: usize;

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
}

struct Queue<S: Statement> {
    waiting: Vec<Waiting<S>>,
    statements: usize,
}

impl<S: Statement> Default for Gather<S> {
    fn default() -> Self {
        Self {
            queue: Mutex::new(Queue {
                waiting: Vec::new(),
                statements: 0,
            }),
        }
    }
}

impl<S: Statement> Gather<S> {
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
    /// free, one made by `statement` runs on a task of its own until no request waits.
    /// `None`: the statement's task ended without answering (it panicked, or its
    /// runtime shut down), after its statement was perhaps sent.
    pub(crate) async fn submit(
        self: &Arc<Self>,
        request: S::Request,
        statement: impl FnOnce() -> S,
    ) -> Option<S::Answer> {
        let (answer, answered) = oneshot::channel();
        let start_statement = {
            let mut queue = self.queue();
            queue.waiting.push(Waiting { request, answer });
            let free = queue.statements < S::AT_ONCE.max(1);
            if free {
                queue.statements += 1;
            }
            free
        };
        if start_statement {
            tokio::spawn(Arc::clone(self).run(statement()));
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::Semaphore;

    use super::*;

    /// A statement that answers ten times each request, once `gate` lets it, and
    /// records which requests each statement took.
    struct Recorded {
        gate: Arc<Semaphore>,
        statements: Arc<Mutex<Vec<Vec<u32>>>>,
    }

    impl Statement for Recorded {
        type Request = u32;
        type Answer = u32;
        const AT_ONCE: usize = 1;

        fn take(_waiting: &[Waiting<Self>]) -> usize {
            3
        }

        fn run(&self, taken: Vec<Waiting<Self>>) -> impl Future<Output = ()> + Send {
            let (gate, statements) = (Arc::clone(&self.gate), Arc::clone(&self.statements));
            async move {
                let _turn = gate.acquire().await.expect("the gate stays open");
                let requests = taken.iter().map(|waiting| waiting.request).collect();
                statements.lock().expect("not poisoned").push(requests);
                for waiting in taken {
                    let _ = waiting.answer.send(waiting.request * 10);
                }
            }
        }
    }

    async fn until(what: &str, done: impl Fn() -> bool) {
        for _ in 0..500 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("waited too long for {what}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_made_while_a_statement_runs_share_the_next_up_to_its_bound() {
        let gather = Arc::new(Gather::default());
        let gate = Arc::new(Semaphore::new(0));
        let statements = Arc::new(Mutex::new(Vec::new()));
        let submit = |request: u32| {
            let gather = Arc::clone(&gather);
            let (gate, statements) = (Arc::clone(&gate), Arc::clone(&statements));
            let statement = move || Recorded { gate, statements };
            tokio::spawn(async move { gather.submit(request, statement).await })
        };
        let waiting = || gather.queue().waiting.len();

        // The first goes at once, alone, and its statement holds until the gate opens.
        let first = submit(0);
        until("the first statement to take its request", || {
            gather.statements_running() == 1 && waiting() == 0
        })
        .await;
        let rest = (1..=7).map(submit).collect::<Vec<_>>();
        until("seven requests waiting", || waiting() == 7).await;
        assert_eq!(gather.statements_running(), 1, "one statement at a time");

        gate.add_permits(100);
        assert_eq!(first.await.expect("ran"), Some(0));
        for (request, answer) in (1..=7).zip(rest) {
            assert_eq!(answer.await.expect("ran"), Some(request * 10));
        }
        // The seven queued in whatever order their tasks ran: three, three, then one.
        let statements = statements.lock().expect("not poisoned").clone();
        let sizes = statements.iter().map(Vec::len).collect::<Vec<_>>();
        assert_eq!(sizes, [1, 3, 3, 1], "{statements:?}");
        let mut taken = statements.concat();
        taken.sort_unstable();
        assert_eq!(taken, (0..=7).collect::<Vec<_>>());
        until("the statement to count itself out", || {
            gather.statements_running() == 0
        })
        .await;
    }
}
