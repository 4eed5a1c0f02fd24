//! Every task the gateway detaches goes through [`spawn`], with a [`TaskKind`] that names it;
//! a bare `tokio::spawn` is denied in this crate (`clippy.toml`'s `disallowed-methods`). Tasks
//! a `JoinSet` owns (an evaluation's concurrent requests) end with their set and are not
//! counted here. Each kind
//! counts its live tasks, and `/metrics` shows them as `switchyard_tasks{task}`, so a leak of
//! connections, streams or background loops shows up as a count that only grows.
//!
//! This is a leaf: every layer may use it, it uses no other module of the crate.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};

use tokio::task::JoinHandle;

/// A kind of task, declared once as a `static` where such tasks start.
pub struct TaskKind {
    name: &'static str,
    live: AtomicUsize,
    listed: Once,
}

impl TaskKind {
    pub const fn new(name: &'static str) -> TaskKind {
        TaskKind {
            name,
            live: AtomicUsize::new(0),
            listed: Once::new(),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Its tasks started and not yet finished (or dropped unfinished).
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }
}

/// Every kind that has started a task, in the order they first did.
static KINDS: Mutex<Vec<&'static TaskKind>> = Mutex::new(Vec::new());

/// Counts a task of its kind while it lives: dropped when the task finishes, panics or is
/// aborted.
struct Live(&'static TaskKind);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Starts `future` as a task of `kind` on the current runtime.
pub fn spawn<F>(kind: &'static TaskKind, future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    kind.listed.call_once(|| {
        KINDS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(kind);
    });
    kind.live.fetch_add(1, Ordering::Relaxed);
    let live = Live(kind);
    #[allow(clippy::disallowed_methods)] // The one place that may.
    tokio::spawn(async move {
        let _live = live;
        future.await
    })
}

/// Each kind that has started a task, with its live count.
pub fn live() -> Vec<(&'static str, usize)> {
    KINDS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .map(|kind| (kind.name, kind.live()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    static FINISHING: TaskKind = TaskKind::new("test_finishing");
    static ABORTED: TaskKind = TaskKind::new("test_aborted");

    #[tokio::test]
    async fn a_kind_counts_its_tasks_while_they_live() {
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let task = spawn(&FINISHING, async move {
            let _ = wait.await;
            7
        });
        assert_eq!(FINISHING.live(), 1);
        assert!(live().contains(&("test_finishing", 1)));
        release.send(()).unwrap();
        assert_eq!(task.await.unwrap(), 7);
        assert_eq!(FINISHING.live(), 0);

        let stuck = spawn(&ABORTED, std::future::pending::<()>());
        assert_eq!(ABORTED.live(), 1);
        stuck.abort();
        assert!(stuck.await.unwrap_err().is_cancelled());
        assert_eq!(ABORTED.live(), 0, "an aborted task is no longer counted");
        assert!(live().contains(&("test_aborted", 0)));
    }
}
