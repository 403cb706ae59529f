//! Where queries run: a multi-thread Tokio runtime of their own, apart from the HTTP server
//! (and, under `meterline dev`, from every other stage), so a query busy on the CPU never
//! starves `/healthz`, the time limit or another stage's server.
//!
//! - Its threads have large stacks ([`STACK_BYTES`]): planning and evaluating recurse over the
//!   statement's tree (bounded by `statement::MAX_DEPTH`), and a stack overflow aborts the
//!   process, it cannot be caught.
//! - Its threads run at a lower priority (nice [`NICE`]): with as many threads as cores, a
//!   burst of queries still leaves the ingest edge of the same machine most of the CPU.
//! - A query is a task of this runtime; the HTTP side awaits it under the time limit and, at
//!   the limit, answers at once and aborts the task: its stream (and every task DataFusion
//!   spawned for it) is dropped at its next yield. What one poll may cost is bounded by the
//!   function limits (`functions`).
//! - A query that panics fails alone (500); the runtime and the server go on.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::joins::{CrossJoinExec, NestedLoopJoinExec};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PhysicalExpr, PlanProperties,
};
use futures::StreamExt;
use tokio::task::JoinHandle;

use crate::Error;
use meterline_schemas::metric_names as m;

/// Stack of every query thread (address space; only what is touched is resident).
pub const STACK_BYTES: usize = 64 << 20;

/// Priority of query threads relative to the rest of the process (Linux: per thread).
pub const NICE: i32 = 10;

/// The query runtime and how many queries are running on it.
pub struct QueryRuntime {
    runtime: Option<tokio::runtime::Runtime>,
    running: Arc<AtomicUsize>,
}

/// Counts a query as running while alive (dropped when its task ends or is aborted), and
/// records how long it ran.
struct Running(Arc<AtomicUsize>, std::time::Instant);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
        metrics::gauge!(m::API_QUERIES_RUNNING).decrement(1.0);
        metrics::histogram!(m::API_QUERY_SECONDS).record(self.1.elapsed().as_secs_f64());
    }
}

impl QueryRuntime {
    /// `threads` worker threads (0: one per core, at least 2).
    pub fn new(threads: usize) -> Result<QueryRuntime, Error> {
        let threads = match threads {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
                .max(2),
            n => n,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .max_blocking_threads(4 * threads)
            .thread_name("meterline-query")
            .thread_stack_size(STACK_BYTES)
            .on_thread_start(lower_priority)
            .enable_all()
            .build()
            .map_err(Error::QueryRuntime)?;
        Ok(QueryRuntime {
            runtime: Some(runtime),
            running: Default::default(),
        })
    }

    /// Runs `f` as a query task; dropping the handle does not stop it, aborting does.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl Future<Output = T> + Send + 'static,
    ) -> JoinHandle<T> {
        self.running.fetch_add(1, Ordering::SeqCst);
        metrics::gauge!(m::API_QUERIES_RUNNING).increment(1.0);
        let running = Running(self.running.clone(), std::time::Instant::now());
        self.runtime
            .as_ref()
            .expect("query runtime")
            .spawn(async move {
                let _running = running;
                f.await
            })
    }

    /// Runs `f` on the query runtime and waits for it; a panic in it is an error here.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, Error> {
        let mut task = AbortOnDrop(self.spawn(f));
        (&mut task.0).await.map_err(|e| {
            tracing::error!(error = %e, "a query task failed");
            Error::Internal("the query failed unexpectedly (the server log has the details)".into())
        })
    }

    /// Queries running now (their tasks not yet ended or dropped).
    pub fn running(&self) -> Arc<AtomicUsize> {
        self.running.clone()
    }
}

impl Drop for QueryRuntime {
    fn drop(&mut self) {
        // dropped from async code when the server stops: never block there
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Aborts the task when dropped (the request went away, or its time is up).
pub struct AbortOnDrop<T>(pub JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `plan` with a yield point above every operator. Tokio aborts a task only where it
/// yields, and DataFusion's operators yield only where their sources do: a join making rows
/// from rows it already holds (a cross join) could run for minutes in one poll of its
/// consumer, and its aborted task with it. Each `CooperativeExec` takes one unit of the
/// task's budget per batch and yields when it is spent (every 128 batches).
pub fn yielding(
    plan: Arc<dyn ExecutionPlan>,
) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        if node.children().is_empty() || node.is::<CooperativeExec>() {
            return Ok(Transformed::no(node));
        }
        Ok(Transformed::yes(
            Arc::new(CooperativeExec::new(node)) as Arc<dyn ExecutionPlan>
        ))
    })
    .map(|t| t.data)
}

/// What holding one batch costs beyond its arrays (the batch, its place in a `Vec`).
pub const BATCH_OVERHEAD: usize = 192;

/// `plan` with the build side of every cross / nested-loop join charged for the batches it
/// holds. Those joins account a batch by its arrays' size, which is 0 for a batch without
/// columns (`count(*)` needs none): a 4-way cross join collected such batches without limit
/// (+1.4 GiB in 5 s under a 256 MiB limit). Each batch of a build side now takes
/// [`BATCH_OVERHEAD`] bytes of the pool until the join has collected it.
pub fn charge_held_batches(
    plan: Arc<dyn ExecutionPlan>,
) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        if !(node.is::<CrossJoinExec>() || node.is::<NestedLoopJoinExec>()) {
            return Ok(Transformed::no(node));
        }
        let mut children: Vec<Arc<dyn ExecutionPlan>> =
            node.children().into_iter().cloned().collect();
        children[0] = Arc::new(HeldBatchesExec::new(children[0].clone()));
        #[allow(deprecated)]
        let node = node.with_new_children(children)?;
        Ok(Transformed::yes(node))
    })
    .map(|t| t.data)
}

/// Passes its input through, charging [`BATCH_OVERHEAD`] per batch for as long as its
/// stream lives (see [`charge_held_batches`]).
#[derive(Debug)]
struct HeldBatchesExec {
    input: Arc<dyn ExecutionPlan>,
}

impl HeldBatchesExec {
    fn new(input: Arc<dyn ExecutionPlan>) -> Self {
        HeldBatchesExec { input }
    }
}

impl DisplayAs for HeldBatchesExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "HeldBatchesExec")
    }
}

impl ExecutionPlan for HeldBatchesExec {
    fn name(&self) -> &str {
        "HeldBatchesExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> datafusion::common::Result<TreeNodeRecursion>,
    ) -> datafusion::common::Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(HeldBatchesExec::new(children.remove(0))))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> datafusion::common::Result<SendableRecordBatchStream> {
        let reservation =
            MemoryConsumer::new("batches held by a join").register(context.memory_pool());
        let input = self.input.execute(partition, context)?;
        let schema = input.schema();
        let charged = input.map(move |b| {
            let b = b?;
            reservation.try_grow(BATCH_OVERHEAD)?;
            Ok(b)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, charged)))
    }
}

fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority has no memory effects; on Linux `who = 0` is the calling thread.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, NICE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_query_fails_alone() {
        let rt = QueryRuntime::new(2).unwrap();
        let caller = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        caller.block_on(async {
            let e = rt.run(async { panic!("boom") }).await;
            assert!(matches!(e, Err(Error::Internal(_))), "{e:?}");
            assert_eq!(
                e.unwrap_err().status(),
                axum::http::StatusCode::INTERNAL_SERVER_ERROR
            );
            // the runtime goes on, and deep recursion has room on its threads
            fn depth(n: u64) -> u64 {
                let pad = std::hint::black_box([0u8; 512]);
                if n == 0 {
                    pad[0] as u64
                } else {
                    depth(n - 1) + 1
                }
            }
            assert_eq!(rt.run(async { depth(50_000) }).await.unwrap(), 50_000);
            assert_eq!(rt.running().load(Ordering::SeqCst), 0);
        });
    }
}
