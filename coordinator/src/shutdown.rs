//! SIGTERM and SIGINT ask the coordinator to drain: stop leasing, take in the results in flight for a
//! bounded time, see every accepted shard's journal write through, and exit non-zero without writing a
//! report, so that a rerun of the same command resumes from the journal. A second signal exits at once.

use std::fmt;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// The signals that start a drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Term,
    Int,
}

impl Signal {
    /// The signal's number (for the conventional exit status 128 + n).
    pub fn number(self) -> u8 {
        match self {
            Signal::Term => 15,
            Signal::Int => 2,
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Signal::Term => "SIGTERM",
            Signal::Int => "SIGINT",
        })
    }
}

/// Whether a drain was asked for, and by which signal.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<Option<Signal>>,
}

impl Shutdown {
    /// Listens for SIGTERM and SIGINT from now on: the first starts a drain, the second exits at once
    /// (status 128 + its number). Their default action, dying on the spot, is off for the rest of the
    /// process, so every caller must watch [`Shutdown::requested`].
    pub fn listen() -> std::io::Result<Self> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let first = next_signal(&mut term, &mut int).await;
            let _ = tx.send(Some(first));
            let second = next_signal(&mut term, &mut int).await;
            eprintln!(
                "tresnet-coordinator: {second} again: exiting now without draining; a rerun of the same \
                 command recomputes every shard that is not journaled"
            );
            std::process::exit(128 + i32::from(second.number()));
        });
        Ok(Shutdown { rx })
    }

    /// A shutdown that is never requested (in-process tests).
    pub fn never() -> Self {
        Shutdown {
            rx: watch::channel(None).1,
        }
    }

    /// The signal that asked for a drain, if one has.
    pub fn requested(&self) -> Option<Signal> {
        *self.rx.borrow()
    }

    /// Resolves once a drain is asked for.
    pub async fn wait(&self) -> Signal {
        let mut rx = self.rx.clone();
        loop {
            if let Some(s) = *rx.borrow_and_update() {
                return s;
            }
            if rx.changed().await.is_err() {
                // No listener: no signal will ever come.
                std::future::pending::<()>().await;
            }
        }
    }
}

async fn next_signal(
    term: &mut tokio::signal::unix::Signal,
    int: &mut tokio::signal::unix::Signal,
) -> Signal {
    tokio::select! {
        _ = term.recv() => Signal::Term,
        _ = int.recv() => Signal::Int,
    }
}

/// A run or sweep stopped by a signal before it was finished. Nothing of it claims completeness: no
/// summary or report was written for the unfinished part, and the exit status is 128 + the signal.
#[derive(Debug, thiserror::Error)]
#[error(
    "{what} interrupted by {signal}: {progress}; no report was written for it; rerun the same command to resume"
)]
pub struct Interrupted {
    pub signal: Signal,
    /// `run`, or the sweep cell.
    pub what: String,
    /// Where it stands: journaled shards, results taken in while draining, shards abandoned.
    pub progress: String,
}

impl Interrupted {
    pub fn exit_code(&self) -> u8 {
        128 + self.signal.number()
    }
}
