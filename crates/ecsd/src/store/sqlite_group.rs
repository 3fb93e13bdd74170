//! Group commit for the agent side of the SQLite store.
//!
//! Acknowledgements, power acknowledgements, heartbeats and deliveries are
//! small writes that arrive in bursts (a fleet restarting together). Each
//! used to be its own `synchronous=FULL` transaction, one fsync apiece,
//! one at a time under the writer lock. Here a caller queues its write as
//! an [`Op`]; one thread (`ecsd-sqlite-group`) takes everything queued (up
//! to [`MAX_BATCH`]), runs it in one `BEGIN IMMEDIATE ... COMMIT`, each op in
//! its own savepoint (an op that fails is rolled back alone and answered
//! with its error; the others go on), and answers every caller only after
//! COMMIT returned: a burst of 1000 acknowledgements costs a few fsyncs.
//! While one batch commits, the next one queues.
//!
//! The ops are the same closures as before (they read rows, ask the domain,
//! write its answer); only the transaction around them is shared.
//!
//! Durability: an op is durable unless its `durable` check says otherwise
//! before the batch begins. Only a heartbeat that changes nothing but the
//! time (same boot, version, address and power driver, no power-state
//! change) says so; a batch made only of such ops is committed with
//! `synchronous=NORMAL`: it survives ecsd being killed (the WAL is written
//! before the answer), but an OS crash or power loss may lose those last-
//! seen times, until the next durable commit or checkpoint syncs the WAL.
//! An acknowledgement is never in such a batch.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use super::sqlite::disk_failure;
use super::{StoreError, StoreResult};

/// The most ops one transaction carries.
pub const MAX_BATCH: usize = 256;
/// Ops waiting for the writer before callers wait to queue.
const QUEUE: usize = 4096;

/// One queued write, type-erased for the queue.
trait Queued: Send {
    /// Before the batch's transaction, on the writer connection: must this
    /// op's commit be durable (`synchronous=FULL`)?
    fn durable(&mut self, conn: &Connection) -> bool;
    /// Runs the op inside its savepoint; true if it succeeded.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller: its own result if the batch committed.
    fn answer(self: Box<Self>, committed: Result<(), &BatchError>);
}

/// A durability check (see [`GroupWriter::write`]).
pub type Check = Box<dyn FnOnce(&Connection) -> bool + Send>;

struct Op<R, F> {
    f: Option<F>,
    check: Option<Check>,
    out: Option<StoreResult<R>>,
    reply: oneshot::Sender<StoreResult<R>>,
}

impl<R, F> Queued for Op<R, F>
where
    R: Send + 'static,
    F: FnOnce(&Connection) -> StoreResult<R> + Send + 'static,
{
    fn durable(&mut self, conn: &Connection) -> bool {
        self.check.take().is_none_or(|c| c(conn))
    }

    fn run(&mut self, conn: &Connection) -> bool {
        let f = self.f.take().expect("an op runs once");
        let r = f(conn);
        let ok = r.is_ok();
        self.out = Some(r);
        ok
    }

    fn answer(self: Box<Self>, committed: Result<(), &BatchError>) {
        let r = match committed {
            Ok(()) => self
                .out
                .unwrap_or_else(|| Err(StoreError::storage("the op did not run"))),
            Err(e) => Err(e.to_store()),
        };
        // The caller may have gone away (its request was dropped).
        let _ = self.reply.send(r);
    }
}

/// Why a whole batch failed (every caller in it gets this).
#[derive(Debug, Clone, thiserror::Error)]
#[error("the group commit failed: {message}")]
pub struct BatchError {
    message: String,
    disk: bool,
}

impl BatchError {
    fn new(e: &rusqlite::Error) -> Self {
        BatchError {
            message: e.to_string(),
            disk: disk_failure(e),
        }
    }

    fn to_store(&self) -> StoreError {
        let e = self.clone();
        if self.disk {
            StoreError::unavailable(e)
        } else {
            StoreError::storage(e)
        }
    }
}

/// How many group commits a store made (tests and metrics).
#[derive(Debug, Default)]
pub struct Counts {
    /// Transactions committed by the group writer.
    pub commits: AtomicU64,
    /// Of those, committed with `synchronous=NORMAL` (time-only heartbeats).
    pub light_commits: AtomicU64,
    /// Ops carried by them.
    pub ops: AtomicU64,
}

/// The queue into the group writer thread; cloned with the store. Dropping
/// the last clone ends the thread and waits for it, so that the connection
/// is closed (and the WAL checkpointed and removed) before, say, `ecsd
/// admin` exits.
#[derive(Clone)]
pub struct GroupWriter {
    inner: Arc<Inner>,
    pub counts: Arc<Counts>,
}

struct Inner {
    queue: Option<mpsc::Sender<Box<dyn Queued>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue ends the thread once it answered what is queued.
        drop(self.queue.take());
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("the group writer thread panicked");
        }
    }
}

impl GroupWriter {
    /// Starts the writer thread over the store's writer connection (shared
    /// with the store's other, single-transaction writes).
    pub fn start(conn: Arc<Mutex<Connection>>) -> std::io::Result<GroupWriter> {
        let (queue, rx) = mpsc::channel(QUEUE);
        let counts = Arc::new(Counts::default());
        let c = counts.clone();
        let thread = std::thread::Builder::new()
            .name("ecsd-sqlite-group".into())
            .spawn(move || writer_loop(rx, conn, c))?;
        Ok(GroupWriter {
            inner: Arc::new(Inner {
                queue: Some(queue),
                thread: Some(thread),
            }),
            counts,
        })
    }

    /// Queues `f` for the next group commit and waits until that commit
    /// returned. `durable`, if given, runs on the writer connection before
    /// the batch's transaction: false lets a batch of only such ops commit
    /// without an fsync.
    pub async fn write<R, F>(&self, durable: Option<Check>, f: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<R> + Send + 'static,
    {
        let started = std::time::Instant::now();
        let (reply, answer) = oneshot::channel();
        let op = Op {
            f: Some(f),
            check: durable,
            out: None,
            reply,
        };
        let queue = self.inner.queue.as_ref().expect("open until dropped");
        queue
            .send(Box::new(op))
            .await
            .map_err(|_| StoreError::storage("the group writer has stopped"))?;
        let r = answer
            .await
            .map_err(|_| StoreError::storage("the group writer stopped before answering"))?;
        // Counted as a write, as it was before it was grouped.
        crate::metrics::store_call("write", started.elapsed());
        r
    }
}

fn writer_loop(
    mut rx: mpsc::Receiver<Box<dyn Queued>>,
    conn: Arc<Mutex<Connection>>,
    counts: Arc<Counts>,
) {
    let mut ops: Vec<Box<dyn Queued>> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        ops.push(first);
        while ops.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        let mut c = conn.lock().expect("store lock");
        let durable = ops.iter_mut().any(|op| op.durable(&c));
        let result = if durable {
            run_batch(&mut c, &mut ops)
        } else {
            set_synchronous(&c, "NORMAL").and_then(|()| {
                let r = run_batch(&mut c, &mut ops);
                // Back to FULL for every other write on this connection.
                set_synchronous(&c, "FULL").and(r)
            })
        };
        drop(c);
        let n = ops.len() as u64;
        match &result {
            Ok(()) => {
                counts.commits.fetch_add(1, Ordering::Relaxed);
                counts.ops.fetch_add(n, Ordering::Relaxed);
                if !durable {
                    counts.light_commits.fetch_add(1, Ordering::Relaxed);
                }
                crate::metrics::group_commit(durable, n);
            }
            Err(e) => tracing::warn!(ops = n, error = %e, "a group commit failed"),
        }
        for op in ops.drain(..) {
            op.answer(result.as_ref().map(|_| ()));
        }
    }
}

fn set_synchronous(c: &Connection, level: &str) -> Result<(), BatchError> {
    c.pragma_update(None, "synchronous", level)
        .map_err(|e| BatchError::new(&e))
}

/// One transaction for the whole batch, a savepoint per op.
fn run_batch(c: &mut Connection, ops: &mut [Box<dyn Queued>]) -> Result<(), BatchError> {
    let err = |e: rusqlite::Error| BatchError::new(&e);
    let mut tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(err)?;
    for op in ops.iter_mut() {
        let sp = tx.savepoint().map_err(err)?;
        // A panicking op fails alone (its caller hears "did not run"), as a
        // panic in a store call failed only that call before.
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| op.run(&sp)));
        if ran.unwrap_or(false) {
            sp.commit().map_err(err)?;
        } else {
            // Dropping the savepoint rolls this op back alone.
            drop(sp);
        }
        // Some errors (a full disk, an I/O error) make SQLite roll back the
        // whole transaction: nothing of this batch is left to commit.
        if tx.is_autocommit() {
            return Err(BatchError {
                message: "SQLite rolled the transaction back after an op failed".into(),
                disk: true,
            });
        }
    }
    tx.commit().map_err(err)
}
