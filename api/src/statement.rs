//! What SQL text is planned at all. Checked before DataFusion sees the statement:
//! - at most [`MAX_SQL_BYTES`] of text, exactly one statement, and a query (DataFusion's own
//!   `CREATE EXTERNAL TABLE`, `COPY` and `RESET` are refused here; the rest of what is not
//!   read-only is refused by `SQLOptions` once planned);
//! - expressions and subqueries nested at most [`MAX_DEPTH`] deep. A chain `1+1+…+1` parses
//!   into a tree as deep as it is long, and planning, optimizing, evaluating and even
//!   dropping such a tree recurse once per level: 3,000 terms overflowed a thread's stack,
//!   which aborts the whole process. The depth is measured on the parsed AST by a visitor
//!   that stops at the limit, so measuring cannot recurse deeper than the limit either;
//! - for scoped principals, `EXPLAIN` only in its plain form: `ANALYZE` reports what the
//!   run did (timings, bytes and rows read, other teams' included), `VERBOSE` and
//!   `COSTS`/statistics print plans at every step with their statistics.
//!
//! Parsing and dropping a statement still recurse over its tree: both happen on the query
//! runtime's threads, whose stacks are large enough for anything within the text limit.

use std::ops::ControlFlow;

use datafusion::common::format::ExplainStatementOptions;
use datafusion::error::DataFusionError;
use datafusion::sql::parser::{DFParserBuilder, Statement};
use datafusion::sql::sqlparser::ast::{Expr, Query, Visit, Visitor};
use datafusion::sql::sqlparser::dialect::GenericDialect;

/// Longest SQL text accepted, in bytes.
pub const MAX_SQL_BYTES: usize = 16 * 1024;

/// Deepest nesting of expressions and subqueries accepted.
pub const MAX_DEPTH: usize = 256;

/// The parser's own limit on recursive descent (parentheses, function arguments, subqueries).
const PARSER_RECURSION_LIMIT: usize = 50;

fn refuse(msg: String) -> DataFusionError {
    DataFusionError::Plan(msg)
}

/// The one statement of `sql`, if it may be planned for this caller.
pub fn check(sql: &str, scoped: bool) -> Result<Statement, DataFusionError> {
    if sql.len() > MAX_SQL_BYTES {
        return Err(refuse(format!(
            "the SQL text is {} bytes; at most {MAX_SQL_BYTES} are accepted",
            sql.len()
        )));
    }
    let mut statements = DFParserBuilder::new(sql)
        .with_dialect(&GenericDialect {})
        .with_recursion_limit(PARSER_RECURSION_LIMIT)
        .build()?
        .parse_statements()?;
    if statements.len() != 1 {
        return Err(refuse(format!(
            "one SQL statement per request (got {})",
            statements.len()
        )));
    }
    let statement = statements.pop_front().expect("one statement");
    check_statement(&statement, scoped)?;
    Ok(statement)
}

fn check_statement(s: &Statement, scoped: bool) -> Result<(), DataFusionError> {
    match s {
        Statement::Statement(s) => depth(s.as_ref()),
        Statement::Explain(e) => {
            if scoped && !plain(&e.options) {
                return Err(refuse(
                    "a team_lead may use EXPLAIN only in its plain form: EXPLAIN ANALYZE, \
                     VERBOSE and statistics describe other teams' rows too"
                        .into(),
                ));
            }
            check_statement(&e.statement, scoped)
        }
        Statement::CreateExternalTable(_) | Statement::CopyTo(_) | Statement::Reset(_) => Err(
            refuse("only queries are accepted: the API is read-only".into()),
        ),
    }
}

/// `EXPLAIN [FORMAT …] query`: no ANALYZE, VERBOSE or statistics.
fn plain(o: &ExplainStatementOptions) -> bool {
    !o.analyze
        && !o.verbose
        && o.analyze_level.is_none()
        && o.analyze_categories.is_none()
        && o.show_statistics.is_none()
}

/// Nesting depth of expressions and queries, stopping at the limit.
#[derive(Default)]
struct Depth {
    now: usize,
}

impl Depth {
    fn enter(&mut self) -> ControlFlow<()> {
        self.now += 1;
        if self.now > MAX_DEPTH {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }

    fn leave(&mut self) -> ControlFlow<()> {
        self.now -= 1;
        ControlFlow::Continue(())
    }
}

impl Visitor for Depth {
    type Break = ();

    fn pre_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
        self.enter()
    }

    fn post_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
        self.leave()
    }

    fn pre_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
        self.enter()
    }

    fn post_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
        self.leave()
    }
}

fn depth(v: &impl Visit) -> Result<(), DataFusionError> {
    match v.visit(&mut Depth::default()) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(()) => Err(refuse(format!(
            "expressions nest deeper than {MAX_DEPTH} levels (a chain like a + b + c … or \
             x OR y OR … counts one level per operator): write long lists as IN (…) or \
             split the expression"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(op: &str, n: usize) -> String {
        format!("SELECT {}", vec!["1"; n].join(op))
    }

    #[test]
    fn deep_and_long_statements_are_refused_before_planning() {
        assert!(check(&chain("+", MAX_DEPTH - 2), false).is_ok());
        for op in ["+", " OR ", " || ", " AND "] {
            let e = check(&chain(op, 2500), false).unwrap_err().to_string();
            assert!(e.contains("deeper than 256"), "{op}: {e}");
        }
        let e = check(&format!("SELECT '{}'", "x".repeat(MAX_SQL_BYTES)), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most 16384"), "{e}");
        assert!(check("SELECT 1; SELECT 2", false).is_err());
        assert!(check("COPY (SELECT 1) TO '/tmp/x.csv'", false).is_err());
    }

    #[test]
    fn scoped_callers_get_plain_explain_only() {
        for q in [
            "EXPLAIN ANALYZE SELECT 1",
            "EXPLAIN VERBOSE SELECT 1",
            "EXPLAIN ANALYZE VERBOSE SELECT 1",
        ] {
            assert!(check(q, true).is_err(), "{q}");
            assert!(check(q, false).is_ok(), "{q}");
        }
        assert!(check("EXPLAIN SELECT 1", true).is_ok());
        assert!(check("EXPLAIN FORMAT TREE SELECT 1", true).is_ok());
    }
}
