//! The functions a query may call, and what they may allocate.
//!
//! DataFusion's memory limit covers what its operators buffer (sorts, joins, aggregations),
//! not the values functions make: `repeat('x', 1e9)` allocated 3.8 GiB under a 256 MiB limit.
//! So every scalar function a session offers is a vetted one ([`VETTED`]; the rest, e.g.
//! `input_file_name` or `array_repeat`, are unregistered, as are all higher-order functions),
//! wrapped in [`Bounded`]:
//! 1. before the call, the most its output can take is estimated from the arguments
//!    ([`Bound`]: `repeat` from the count, `lpad` from the width, `range` from its bounds,
//!    `replace` from the replacement, any other from its inputs) and reserved in the query's
//!    memory pool: a call that cannot fit fails before it allocates;
//! 2. the output, always an array when the batch has rows (a constant would be repeated over
//!    the batch by whoever uses it), is charged to the pool for as long as it lives: its
//!    buffers carry the reservation and release it when the last of them is dropped. Values
//!    held at once (nested calls, columns of a batch) add up against the one limit;
//! 3. `levenshtein`'s time grows with the product of its arguments' lengths and cannot be
//!    interrupted: that product is bounded per call ([`MAX_LEVENSHTEIN_CELLS`]).
//!
//! The `||` operator is rewritten into the bounded [`ConcatOp`], and the plan is checked
//! twice more: after the analyzer and after every optimizer pass any function not wrapped
//! (a rewrite may build one directly) is wrapped ([`WrapFunctions`]); and before it runs,
//! the constants of the physical plan together, repeated over a batch of rows, must fit the
//! limit ([`vet_physical`]): constants are made at planning time, outside any pool.
//! Aggregates that collect every value (`array_agg`, `string_agg`) are accounted by their
//! operator; as window functions they would make a list per row of all rows before it, so
//! they are refused there ([`vet`]). Recursive CTEs are off (`catalog`).

use std::any::Any;
use std::hash::{Hash, Hasher};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use datafusion::arrow::array::{make_array, Array, ArrayData, ArrayRef, AsArray};
use datafusion::arrow::buffer::{BooleanBuffer, Buffer, NullBuffer};
use datafusion::arrow::compute::cast;
use datafusion::arrow::compute::kernels::concat_elements::concat_elements_dyn;
use datafusion::arrow::compute::kernels::length::length;
use datafusion::arrow::datatypes::{DataType, FieldRef, Int64Type};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{plan_err, Result, ScalarValue};
use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool, MemoryReservation};
use datafusion::logical_expr::expr::{ScalarFunction, WindowFunction};
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    BinaryExpr, ColumnarValue, Documentation, Expr, LogicalPlan, Operator, ReturnFieldArgs,
    ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility, WindowFunctionDefinition,
};
use datafusion::optimizer::analyzer::AnalyzerRule;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};
use datafusion::physical_expr::expressions::Literal;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;

/// Most character pairs one `levenshtein` call may compare (about a tenth of a second).
pub const MAX_LEVENSHTEIN_CELLS: u128 = 100_000_000;

/// What bounds a function's output (and time), from its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bound {
    /// At most a few times its inputs (constants counted once per row), plus a little per
    /// row: string functions that map, cut or join their inputs, hashes, dates, math.
    Inputs,
    /// `repeat(s, n)`: `len(s) × n`.
    Repeat,
    /// `lpad(s, n [, fill])`, `rpad`: `n` characters of up to 4 bytes.
    Pad,
    /// `replace(s, from, to)`: every `from` (or every position, if empty) becomes `to`.
    Replace,
    /// `regexp_replace(s, re, to [, flags])`: one match (all with `g`) becomes `to`, whose
    /// group references repeat text of `s`.
    RegexpReplace,
    /// `concat_ws(sep, …)`: the inputs and `sep` between each two.
    ConcatWs,
    /// `array_to_string(list, sep [, null])`: the elements and `sep` after each.
    Join,
    /// `to_char(t, format)`: a specifier of 2 characters writes at most 32.
    ToChar,
    /// `string_to_array(s, sep)`: an element per character at worst.
    Split,
    /// `range(a, b [, step])`, `generate_series`: integers only, 8 bytes each.
    Series,
    /// `levenshtein(a, b)`: time `len(a) × len(b)` (memory as `Inputs`).
    Levenshtein,
}

/// Every scalar function a query may call, and its bound. Not listed, not registered: a
/// function reading where rows came from (`input_file_name`, `file_row_index`), making
/// arrays of a size given by a number (`array_repeat`, `array_resize`), set operations over
/// arrays (quadratic), maps, unions, field metadata. A new DataFusion function is
/// unavailable until added here with its bound.
pub const VETTED: &[(&str, Bound)] = {
    use Bound::*;
    &[
        // math
        ("abs", Inputs),
        ("acos", Inputs),
        ("acosh", Inputs),
        ("asin", Inputs),
        ("asinh", Inputs),
        ("atan", Inputs),
        ("atan2", Inputs),
        ("atanh", Inputs),
        ("cbrt", Inputs),
        ("ceil", Inputs),
        ("cos", Inputs),
        ("cosh", Inputs),
        ("cot", Inputs),
        ("degrees", Inputs),
        ("exp", Inputs),
        ("factorial", Inputs),
        ("floor", Inputs),
        ("gcd", Inputs),
        ("isnan", Inputs),
        ("iszero", Inputs),
        ("lcm", Inputs),
        ("ln", Inputs),
        ("log", Inputs),
        ("log10", Inputs),
        ("log2", Inputs),
        ("nanvl", Inputs),
        ("pi", Inputs),
        ("power", Inputs),
        ("radians", Inputs),
        ("random", Inputs),
        ("round", Inputs),
        ("signum", Inputs),
        ("sin", Inputs),
        ("sinh", Inputs),
        ("sqrt", Inputs),
        ("tan", Inputs),
        ("tanh", Inputs),
        ("trunc", Inputs),
        // conditional
        ("coalesce", Inputs),
        ("greatest", Inputs),
        ("least", Inputs),
        ("nullif", Inputs),
        ("nvl", Inputs),
        ("nvl2", Inputs),
        // text
        ("ascii", Inputs),
        ("bit_length", Inputs),
        ("btrim", Inputs),
        ("character_length", Inputs),
        ("chr", Inputs),
        ("concat", Inputs),
        ("concat_ws", ConcatWs),
        ("contains", Inputs),
        ("decode", Inputs),
        ("digest", Inputs),
        ("encode", Inputs),
        ("ends_with", Inputs),
        ("find_in_set", Inputs),
        ("initcap", Inputs),
        ("left", Inputs),
        ("levenshtein", Levenshtein),
        ("lower", Inputs),
        ("lpad", Pad),
        ("ltrim", Inputs),
        ("md5", Inputs),
        ("octet_length", Inputs),
        ("overlay", Inputs),
        ("regexp_count", Inputs),
        ("regexp_instr", Inputs),
        ("regexp_like", Inputs),
        ("regexp_match", Inputs),
        ("regexp_replace", RegexpReplace),
        ("repeat", Repeat),
        ("replace", Replace),
        ("reverse", Inputs),
        ("right", Inputs),
        ("rpad", Pad),
        ("rtrim", Inputs),
        ("sha224", Inputs),
        ("sha256", Inputs),
        ("sha384", Inputs),
        ("sha512", Inputs),
        ("split_part", Inputs),
        ("starts_with", Inputs),
        ("string_to_array", Split),
        ("strpos", Inputs),
        ("substr", Inputs),
        ("substr_index", Inputs),
        ("to_hex", Inputs),
        ("translate", Inputs),
        ("upper", Inputs),
        ("uuid", Inputs),
        // time
        ("current_date", Inputs),
        ("current_time", Inputs),
        ("date_bin", Inputs),
        ("date_part", Inputs),
        ("date_trunc", Inputs),
        ("from_unixtime", Inputs),
        ("make_date", Inputs),
        ("make_time", Inputs),
        ("now", Inputs),
        ("to_char", ToChar),
        ("to_date", Inputs),
        ("to_local_time", Inputs),
        ("to_time", Inputs),
        ("to_timestamp", Inputs),
        ("to_timestamp_micros", Inputs),
        ("to_timestamp_millis", Inputs),
        ("to_timestamp_nanos", Inputs),
        ("to_timestamp_seconds", Inputs),
        ("to_unixtime", Inputs),
        // types, structs, arrays
        ("arrow_cast", Inputs),
        ("arrow_try_cast", Inputs),
        ("arrow_typeof", Inputs),
        ("cast_to_type", Inputs),
        ("try_cast_to_type", Inputs),
        ("get_field", Inputs),
        ("named_struct", Inputs),
        ("struct", Inputs),
        ("version", Inputs),
        ("make_array", Inputs),
        ("array_append", Inputs),
        ("array_concat", Inputs),
        ("array_distinct", Inputs),
        ("array_element", Inputs),
        ("array_has", Inputs),
        ("array_length", Inputs),
        ("array_max", Inputs),
        ("array_min", Inputs),
        ("array_position", Inputs),
        ("array_prepend", Inputs),
        ("array_slice", Inputs),
        ("array_sort", Inputs),
        ("array_to_string", Join),
        ("cardinality", Inputs),
        ("range", Series),
        ("generate_series", Series),
    ]
};

/// The bound of a vetted function (by its name).
pub fn bound_of(name: &str) -> Option<Bound> {
    VETTED.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}

/// Where a query's function outputs are charged.
#[derive(Debug, Clone)]
pub struct Limits {
    pub pool: Arc<dyn MemoryPool>,
    /// Bytes of constants the functions of one query may make in all (`limit / batch rows`:
    /// a constant may be repeated once per row of a batch).
    pub constants_budget: usize,
    /// Bytes of constants made so far (never released: they live in the plan).
    pub constants: Arc<AtomicUsize>,
}

impl Limits {
    /// Limits of a query with `limit_bytes` of memory and batches of `batch_rows` rows.
    pub fn new(pool: Arc<dyn MemoryPool>, limit_bytes: usize, batch_rows: usize) -> Self {
        Limits {
            pool,
            constants_budget: limit_bytes / batch_rows.max(1),
            constants: Default::default(),
        }
    }
}

/// Offers `ctx` only the vetted functions, each bounded against `limits`; installs the
/// rewrite of `||` and the checks that wrap whatever a rewrite builds.
pub fn install(ctx: &SessionContext, limits: &Limits) {
    let state = ctx.state();
    let mut seen: Vec<Arc<ScalarUDF>> = state.scalar_functions().values().cloned().collect();
    seen.sort_by(|a, b| a.name().cmp(b.name()));
    seen.dedup_by(|a, b| a.name() == b.name());
    for f in seen {
        ctx.deregister_udf(f.name());
        if let Some(bound) = bound_of(f.name()) {
            ctx.register_udf(Bounded::udf(f, bound, limits));
        }
    }
    for name in state.higher_order_functions().keys() {
        ctx.deregister_higher_order_function(name);
    }
    let wrap = Arc::new(WrapFunctions {
        limits: limits.clone(),
    });
    ctx.add_analyzer_rule(wrap.clone());
    ctx.add_optimizer_rule(wrap);
}

/// A vetted function whose calls reserve their output in the query's pool first and keep it
/// charged while it lives (see the module doc).
#[derive(Debug)]
pub struct Bounded {
    inner: Arc<ScalarUDF>,
    bound: Bound,
    limits: Limits,
}

impl PartialEq for Bounded {
    fn eq(&self, other: &Self) -> bool {
        self.inner == other.inner && self.bound == other.bound
    }
}

impl Eq for Bounded {}

impl Hash for Bounded {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.inner.hash(state);
        self.bound.hash(state);
    }
}

impl Bounded {
    pub fn udf(inner: Arc<ScalarUDF>, bound: Bound, limits: &Limits) -> ScalarUDF {
        ScalarUDF::new_from_impl(Bounded {
            inner,
            bound,
            limits: limits.clone(),
        })
    }

    /// `f` bounded, unless it is already.
    fn wrap(f: &Arc<ScalarUDF>, limits: &Limits) -> Option<Arc<ScalarUDF>> {
        if (f.inner().as_ref() as &dyn Any).is::<Bounded>() {
            return None;
        }
        // a function a rewrite built directly: its bound, or its inputs'
        let bound = bound_of(f.name()).unwrap_or(Bound::Inputs);
        Some(Arc::new(Bounded::udf(f.clone(), bound, limits)))
    }

    fn reserve(&self, bytes: u128) -> Result<MemoryReservation> {
        let r = MemoryConsumer::new(format!("function {}", self.inner.name()))
            .register(&self.limits.pool);
        r.try_grow(usize::try_from(bytes).unwrap_or(usize::MAX))?;
        Ok(r)
    }
}

impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn display_name(&self, args: &[Expr]) -> Result<String> {
        #[allow(deprecated)]
        self.inner.inner().display_name(args)
    }

    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        self.inner.inner().schema_name(args)
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.inner().return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.inner().return_field_from_args(args)
    }

    fn is_nullable(&self, args: &[Expr], schema: &dyn datafusion::common::ExprSchema) -> bool {
        #[allow(deprecated)]
        self.inner.inner().is_nullable(args, schema)
    }

    fn is_strict(&self) -> bool {
        self.inner.inner().is_strict()
    }

    fn with_updated_config(&self, config: &ConfigOptions) -> Option<ScalarUDF> {
        let updated = self.inner.inner().with_updated_config(config)?;
        Some(Bounded::udf(Arc::new(updated), self.bound, &self.limits))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        // constant arguments over one row: constant folding, whose result becomes a constant
        // of the plan (outside the pool, repeated over the rows of a batch where used)
        let constant = rows <= 1
            && !args.args.is_empty()
            && args
                .args
                .iter()
                .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let estimate = estimate(self.name(), self.bound, &args.args, rows)?;
        let reservation = self.reserve(estimate)?;
        let array = match self.inner.invoke_with_args(args)? {
            ColumnarValue::Scalar(s) => s.to_array_of_size(rows.max(1))?,
            ColumnarValue::Array(a) => a,
        };
        let bytes = array.get_array_memory_size();
        if constant {
            let total = self.limits.constants.fetch_add(bytes, Ordering::SeqCst) + bytes;
            if total > self.limits.constants_budget {
                return Err(DataFusionError::ResourcesExhausted(format!(
                    "{}() makes constants of {total} bytes in this query; at most {} (the \
                     memory limit over a batch of rows)",
                    self.name(),
                    self.limits.constants_budget
                )));
            }
        }
        reservation.try_resize(bytes)?;
        Ok(ColumnarValue::Array(charged(array, reservation)))
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        Ok(match self.inner.inner().simplify(args, info)? {
            // a simplification may build calls of unbounded functions: bound them too
            ExprSimplifyResult::Simplified(e) => {
                ExprSimplifyResult::Simplified(wrap_expr(e, &self.limits)?.data)
            }
            original => original,
        })
    }

    fn short_circuits(&self) -> bool {
        self.inner.inner().short_circuits()
    }

    fn conditional_arguments<'a>(
        &self,
        args: &'a [Expr],
    ) -> Option<(Vec<&'a Expr>, Vec<&'a Expr>)> {
        self.inner.inner().conditional_arguments(args)
    }

    fn output_ordering(&self, inputs: &[ExprProperties]) -> Result<SortProperties> {
        self.inner.inner().output_ordering(inputs)
    }

    fn preserves_lex_ordering(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.inner.inner().preserves_lex_ordering(inputs)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.inner().coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.inner().documentation()
    }
}

/// Bytes an argument takes over `rows` rows (a constant counts once per row).
fn bytes(a: &ColumnarValue, rows: usize) -> u128 {
    match a {
        ColumnarValue::Array(a) => a.get_array_memory_size() as u128,
        ColumnarValue::Scalar(s) => s.size() as u128 * rows.max(1) as u128,
    }
}

/// Per row (at least one), the byte length of a text argument (NULL: 0).
fn lengths(a: &ColumnarValue, rows: usize) -> Result<Vec<u128>> {
    let rows = rows.max(1);
    let array = match a {
        ColumnarValue::Scalar(s) => {
            let n = match s {
                ScalarValue::Utf8(Some(v))
                | ScalarValue::LargeUtf8(Some(v))
                | ScalarValue::Utf8View(Some(v)) => v.len() as u128,
                ScalarValue::Binary(Some(v))
                | ScalarValue::LargeBinary(Some(v))
                | ScalarValue::BinaryView(Some(v)) => v.len() as u128,
                ScalarValue::Dictionary(_, v) => {
                    return lengths(&ColumnarValue::Scalar(v.as_ref().clone()), rows)
                }
                _ => 0,
            };
            return Ok(vec![n; rows]);
        }
        ColumnarValue::Array(a) => a.clone(),
    };
    let text = match array.data_type() {
        DataType::Utf8
        | DataType::LargeUtf8
        | DataType::Utf8View
        | DataType::Binary
        | DataType::LargeBinary => array,
        _ => cast(&array, &DataType::LargeUtf8)?,
    };
    let lens = cast(&length(&text)?, &DataType::Int64)?;
    let lens = lens.as_primitive::<Int64Type>();
    Ok((0..lens.len())
        .map(|i| {
            if lens.is_valid(i) {
                lens.value(i).max(0) as u128
            } else {
                0
            }
        })
        .collect())
}

/// Per row (at least one), an integer argument (NULL: 0).
fn integers(a: &ColumnarValue, rows: usize) -> Result<Vec<i128>> {
    let array = a.to_array(rows.max(1))?;
    let ints = cast(&array, &DataType::Int64)?;
    let ints = ints.as_primitive::<Int64Type>();
    Ok((0..ints.len())
        .map(|i| {
            if ints.is_valid(i) {
                ints.value(i) as i128
            } else {
                0
            }
        })
        .collect())
}

/// Per row, the sum of `f` over the rows of the arguments `idx`.
fn per_row(
    args: &[ColumnarValue],
    rows: usize,
    f: impl Fn(&[Vec<u128>], usize) -> u128,
    idx: &[usize],
) -> Result<u128> {
    let cols: Vec<Vec<u128>> = idx
        .iter()
        .map(|i| match args.get(*i) {
            Some(a) => lengths(a, rows),
            None => Ok(vec![0; rows.max(1)]),
        })
        .collect::<Result<_>>()?;
    Ok((0..rows.max(1)).map(|r| f(&cols, r)).sum())
}

/// The most a call's output can take, in bytes (see [`Bound`]).
fn estimate(name: &str, bound: Bound, args: &[ColumnarValue], rows: usize) -> Result<u128> {
    let overhead = 64 * rows.max(1) as u128;
    let inputs: u128 = args.iter().map(|a| bytes(a, rows)).sum::<u128>() * 4 + overhead;
    Ok(match bound {
        Bound::Inputs => inputs,
        Bound::Repeat => {
            let lens = lengths(&args[0], rows)?;
            let counts = integers(&args[1], rows)?;
            let out: u128 = lens
                .iter()
                .zip(&counts)
                .map(|(l, n)| l * (*n).max(0) as u128)
                .sum();
            out + overhead
        }
        Bound::Pad => {
            let widths = integers(&args[1], rows)?;
            widths.iter().map(|n| (*n).max(0) as u128 * 4).sum::<u128>() + inputs
        }
        Bound::Replace => {
            let out = per_row(
                args,
                rows,
                |c, r| {
                    let (s, from, to) = (c[0][r], c[1][r], c[2][r]);
                    s + (s / from.max(1) + 1) * to
                },
                &[0, 1, 2],
            )?;
            out + overhead
        }
        Bound::RegexpReplace => {
            let global = match args.get(3) {
                None => false,
                Some(ColumnarValue::Scalar(f)) => f.to_string().contains('g'),
                Some(ColumnarValue::Array(_)) => true,
            };
            let refs = match args.get(2) {
                Some(ColumnarValue::Scalar(to)) => {
                    let to = to.to_string();
                    (to.matches('\\').count() + to.matches('$').count()) as u128
                }
                _ => 16,
            };
            let out = per_row(
                args,
                rows,
                |c, r| {
                    let (s, to) = (c[0][r], c[2][r]);
                    let matches = if global { s + 1 } else { 1 };
                    s * (1 + refs) + matches * to
                },
                &[0, 1, 2],
            )?;
            out + overhead
        }
        Bound::ConcatWs => {
            let seps = lengths(&args[0], rows)?;
            let n = args.len().saturating_sub(2) as u128;
            inputs + seps.iter().map(|s| s * n).sum::<u128>()
        }
        Bound::Join => {
            let elements = match &args[0] {
                ColumnarValue::Array(a) => element_count(a),
                ColumnarValue::Scalar(s) => {
                    element_count(&s.to_array_of_size(1)?) * rows.max(1) as u128
                }
            };
            let sep = args[1..]
                .iter()
                .map(|a| lengths(a, rows).map(|l| l.into_iter().max().unwrap_or(0)))
                .sum::<Result<u128>>()?;
            inputs + elements * sep
        }
        Bound::ToChar => inputs * 16,
        Bound::Split => inputs * 16,
        Bound::Series => {
            let int = |a: &ColumnarValue| a.data_type().is_integer();
            if !args.iter().all(int) {
                return plan_err!(
                    "{name}() makes arrays of integers only here (for dates and times use \
                     the generate_series table function: SELECT * FROM generate_series(…))"
                );
            }
            let start = integers(&args[0], rows)?;
            let stop = integers(args.get(1).unwrap_or(&args[0]), rows)?;
            let step = match args.get(2) {
                Some(s) => integers(s, rows)?,
                None => vec![1; start.len()],
            };
            let out: u128 = (0..start.len())
                .map(|r| {
                    let step = step[r].unsigned_abs().max(1);
                    (stop[r] - start[r]).unsigned_abs() / step + 1
                })
                .sum();
            out * 8 + overhead
        }
        Bound::Levenshtein => {
            let cells = per_row(args, rows, |c, r| c[0][r] * c[1][r], &[0, 1])?;
            if cells > MAX_LEVENSHTEIN_CELLS {
                // time, not memory: one call cannot be interrupted
                return Err(DataFusionError::Execution(format!(
                    "levenshtein() would compare {cells} pairs of characters in one batch; \
                     at most {MAX_LEVENSHTEIN_CELLS} are allowed"
                )));
            }
            inputs
        }
    })
}

/// Elements of a list array (all rows together).
fn element_count(a: &ArrayRef) -> u128 {
    match a.data_type() {
        DataType::List(_) => a.as_list::<i32>().values().len() as u128,
        DataType::LargeList(_) => a.as_list::<i64>().values().len() as u128,
        DataType::FixedSizeList(..) => a.as_fixed_size_list().values().len() as u128,
        _ => a.len() as u128,
    }
}

/// Owns an array's buffers and its reservation: released when the last buffer viewing
/// them is dropped.
struct Charge {
    _data: ArrayData,
    _reservation: MemoryReservation,
}

// Read-only data and a reservation (an atomic counter in the pool): nothing a panic could
// leave half-changed.
impl std::panic::RefUnwindSafe for Charge {}

/// `a`, its buffers now owned by a [`Charge`] holding `reservation`.
fn charged(a: ArrayRef, reservation: MemoryReservation) -> ArrayRef {
    let data = a.to_data();
    drop(a);
    let owner: Arc<Charge> = Arc::new(Charge {
        _data: data.clone(),
        _reservation: reservation,
    });
    make_array(rewrap(&data, &owner))
}

fn view(b: &Buffer, owner: &Arc<Charge>) -> Buffer {
    let ptr = NonNull::new(b.as_ptr() as *mut u8).unwrap_or(NonNull::dangling());
    // SAFETY: `owner` keeps `b` (inside its `ArrayData`) alive, unchanged, as long as the
    // new buffer exists; the new buffer views exactly `b`'s bytes.
    unsafe { Buffer::from_custom_allocation(ptr, b.len(), owner.clone()) }
}

fn rewrap(data: &ArrayData, owner: &Arc<Charge>) -> ArrayData {
    let buffers: Vec<Buffer> = data.buffers().iter().map(|b| view(b, owner)).collect();
    let children: Vec<ArrayData> = data.child_data().iter().map(|c| rewrap(c, owner)).collect();
    let nulls = data.nulls().map(|n| {
        let inner = n.inner();
        NullBuffer::new(BooleanBuffer::new(
            view(inner.inner(), owner),
            inner.offset(),
            inner.len(),
        ))
    });
    let builder = data
        .clone()
        .into_builder()
        .buffers(buffers)
        .child_data(children)
        .nulls(nulls);
    // SAFETY: the same layout, lengths and offsets as `data`, which is valid.
    unsafe { builder.build_unchecked() }
}

/// `a || b` on text or bytes (NULL if either is), as a bounded function: the operator itself
/// would make its output outside any pool.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ConcatOp {
    signature: Signature,
}

impl ConcatOp {
    pub fn new() -> Self {
        ConcatOp {
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

impl Default for ConcatOp {
    fn default() -> Self {
        ConcatOp::new()
    }
}

impl ScalarUDFImpl for ConcatOp {
    fn name(&self) -> &str {
        "||"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(arg_types[0].clone())
    }

    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        Ok(format!(
            "{} || {}",
            args[0].schema_name(),
            args[1].schema_name()
        ))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        if let [ColumnarValue::Scalar(a), ColumnarValue::Scalar(b)] = args.args.as_slice() {
            let out = concat_elements_dyn(&a.to_array_of_size(1)?, &b.to_array_of_size(1)?)?;
            return Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?));
        }
        let a = args.args[0].to_array(rows)?;
        let b = args.args[1].to_array(rows)?;
        Ok(ColumnarValue::Array(concat_elements_dyn(&a, &b)?))
    }
}

/// `e` with every function call bounded and `||` on text made a bounded call.
fn wrap_expr(e: Expr, limits: &Limits) -> Result<Transformed<Expr>> {
    e.transform_up(|e| {
        Ok(match e {
            Expr::ScalarFunction(ScalarFunction { func, args }) => {
                match Bounded::wrap(&func, limits) {
                    Some(func) => {
                        Transformed::yes(Expr::ScalarFunction(ScalarFunction { func, args }))
                    }
                    None => Transformed::no(Expr::ScalarFunction(ScalarFunction { func, args })),
                }
            }
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::StringConcat,
                right,
            }) => {
                let op = Arc::new(Bounded::udf(
                    Arc::new(ScalarUDF::new_from_impl(ConcatOp::new())),
                    Bound::Inputs,
                    limits,
                ));
                Transformed::yes(Expr::ScalarFunction(ScalarFunction::new_udf(
                    op,
                    vec![*left, *right],
                )))
            }
            other => Transformed::no(other),
        })
    })
}

/// Bounds every function call of a plan: after the analyzer (type coercion done, so `||`
/// has its operand types) and after every optimizer pass (rewrites may build calls).
#[derive(Debug)]
pub struct WrapFunctions {
    limits: Limits,
}

impl WrapFunctions {
    fn apply(&self, plan: LogicalPlan) -> Result<Transformed<LogicalPlan>> {
        plan.transform_up_with_subqueries(|node| {
            node.map_expressions(|e| wrap_expr(e, &self.limits))
        })
    }
}

impl AnalyzerRule for WrapFunctions {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        Ok(self.apply(plan)?.data)
    }

    fn name(&self) -> &str {
        "meterline_bound_functions"
    }
}

impl OptimizerRule for WrapFunctions {
    fn name(&self) -> &str {
        "meterline_bound_functions"
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        self.apply(plan)
    }
}

/// Aggregates that keep every value they see.
const COLLECTING: [&str; 2] = ["array_agg", "string_agg"];

/// Refuses what a plan does with functions that no bound can make safe: collecting
/// aggregates as window functions (a list of every earlier row, for every row).
pub fn vet(plan: &LogicalPlan) -> Result<()> {
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::Window(w) = node {
            for e in &w.window_expr {
                let mut found = None;
                e.apply(|x| {
                    if let Expr::WindowFunction(f) = x {
                        let WindowFunction { fun, .. } = f.as_ref();
                        if let WindowFunctionDefinition::AggregateUDF(u) = fun {
                            if COLLECTING.contains(&u.name()) {
                                found = Some(u.name().to_string());
                                return Ok(TreeNodeRecursion::Stop);
                            }
                        }
                    }
                    Ok(TreeNodeRecursion::Continue)
                })?;
                if let Some(name) = found {
                    return plan_err!(
                        "{name} is not available as a window function (it would build, for \
                         every row, a list of all the rows before it); use it with GROUP BY"
                    );
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(())
}

/// Refuses a physical plan whose constants, repeated over a batch of `batch_rows` rows,
/// would not fit `limit_bytes` (a constant in a projection is repeated once per row, and
/// constants are made at planning time, outside the pool).
pub fn vet_physical(
    plan: &Arc<dyn ExecutionPlan>,
    limit_bytes: usize,
    batch_rows: usize,
) -> Result<()> {
    let mut constants = 0usize;
    let mut nodes = vec![plan.clone()];
    while let Some(node) = nodes.pop() {
        node.apply_expressions(&mut |e| {
            e.apply(|x| {
                if let Some(l) = x.downcast_ref::<Literal>() {
                    constants += l.value().size();
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })?;
        nodes.extend(node.children().into_iter().cloned());
    }
    if constants.saturating_mul(batch_rows) > limit_bytes {
        return Err(DataFusionError::ResourcesExhausted(format!(
            "the query's constants take {constants} bytes, {} MiB once repeated over a batch \
             of {batch_rows} rows: more than its memory limit of {} MiB",
            constants.saturating_mul(batch_rows) >> 20,
            limit_bytes >> 20
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::execution::memory_pool::GreedyMemoryPool;

    #[test]
    fn a_session_offers_the_vetted_functions_only_each_bounded() {
        let stock = SessionContext::new();
        let stock = stock.state();
        for (name, _) in VETTED {
            assert!(
                stock.scalar_functions().contains_key(*name),
                "{name} is vetted but DataFusion has no such function"
            );
        }
        let ctx = SessionContext::new();
        let limits = Limits::new(Arc::new(GreedyMemoryPool::new(1 << 20)), 1 << 20, 8192);
        install(&ctx, &limits);
        let state = ctx.state();
        for (name, f) in state.scalar_functions() {
            assert!(
                bound_of(f.name()).is_some(),
                "{name} ({}) is not vetted",
                f.name()
            );
            assert!(
                (f.inner().as_ref() as &dyn Any).is::<Bounded>(),
                "{name} is not bounded"
            );
        }
        for gone in [
            "input_file_name",
            "file_row_index",
            "array_repeat",
            "array_resize",
        ] {
            assert!(!state.scalar_functions().contains_key(gone), "{gone}");
        }
        assert!(state.higher_order_functions().is_empty());
    }

    #[test]
    fn estimates_follow_the_arguments_not_the_inputs() {
        let s = |v: &str| ColumnarValue::Scalar(ScalarValue::Utf8(Some(v.into())));
        let i = |v: i64| ColumnarValue::Scalar(ScalarValue::Int64(Some(v)));
        let repeat = estimate("repeat", Bound::Repeat, &[s("ab"), i(1_000_000_000)], 1).unwrap();
        assert!(repeat >= 2_000_000_000);
        let pad = estimate("lpad", Bound::Pad, &[s("x"), i(1_000_000)], 1).unwrap();
        assert!(pad >= 4_000_000);
        let range = estimate("range", Bound::Series, &[i(1), i(100_000_001)], 1).unwrap();
        assert!(range >= 800_000_000);
        let replace = estimate(
            "replace",
            Bound::Replace,
            &[s(&"a".repeat(1000)), s("a"), s(&"b".repeat(1000))],
            1,
        )
        .unwrap();
        assert!(replace >= 1_000_000);
        assert!(estimate(
            "levenshtein",
            Bound::Levenshtein,
            &[s(&"a".repeat(20_000)), s(&"b".repeat(20_000))],
            1
        )
        .is_err());
        let dates = ColumnarValue::Scalar(ScalarValue::Date32(Some(0)));
        assert!(estimate("range", Bound::Series, &[dates.clone(), dates], 1).is_err());
    }
}
