//! The team-lead SQL target's fixture and grammar.
//!
//! Fixture: a ledger written by the real writer (`meterline_ledger::table::Ledger`), the
//! anomaly files by the stage's writer, and a `budgets` batch by the API's own `to_batch`, in
//! one temp dir, built once per process. Rows of the lead's team `search` carry ordinary
//! values; every row of anyone else (team `zz-other`, team `search-zz-other`, no team, org-wide
//! anomalies and budgets) carries a marker in each string (`zz-other`, `SECRETKEY`), the cost
//! `98765.4321` and the time `2031-07-13T13:37:42Z`: none may appear in a lead's answer or error.
//!
//! Answer: `meterline_api::run_sql(&Shared, QueryScope::Teams(["search"]), sql, format)` — what
//! `POST /v1/sql` calls for a team lead after authentication (session from
//! `meterline_api::query_session`, the API's query runtime, row cap, time limit; JSON, CSV or
//! Arrow IPC) — with `Shared` built as `App::build` builds it (no broker, budgets set directly).
//!
//! Grammar: SQL built from fuzzer bytes over the real tables, views and columns (typed), with
//! casts, CASE, division, string and date functions, aggregates with GROUP BY / HAVING, window
//! functions, self joins of `usage`, joins with `anomalies` / `budgets`, CTEs, set operations,
//! scalar / EXISTS / IN subqueries, ORDER BY and LIMIT.

use std::sync::OnceLock;

use arbitrary::Unstructured;
use chrono::{DateTime, Utc};
use meterline_api::{
    run_sql, ApiConfig, BudgetCache, BudgetSnapshot, Format, LedgerView, QueryRuntime, QueryScope,
    Shared,
};
use meterline_ledger::Row;
use meterline_ledger::{Ledger, LedgerConfig};
use meterline_runtime::auth::TokenTable;
use meterline_schemas::{
    Anomaly, BudgetAction, BudgetChange, BudgetSignal, BudgetState, CostLines, Money, PeriodKind,
    PricedUsage, Scope, ScopeKind, TenantPath, Threshold, UsageEvent,
};
use std::sync::Arc;

/// What no answer or error of the lead may contain (compared lower-case).
pub const MARKERS: [&str; 5] = [
    "zz-other",
    "secretkey",
    "98765.4321",
    "2031-07-13",
    "13:37:42",
];

pub struct Fixture {
    _dir: tempfile::TempDir,
    /// The API's state as `App::build` makes it (no broker; budgets set directly).
    pub shared: Arc<Shared>,
    /// The HTTP side's runtime (queries run on the API's own query runtime).
    pub rt: tokio::runtime::Runtime,
}

fn t(s: &str) -> DateTime<Utc> {
    s.parse().expect("fixture time")
}

struct R {
    offset: i64,
    team: Option<&'static str>,
    key: &'static str,
    user: &'static str,
    model: &'static str,
    cost: &'static str,
    at: &'static str,
    tokens: i64,
}

fn row(r: &R) -> Row {
    let other = r.team != Some("search");
    let mut event = UsageEvent::example();
    event.event_id = if other {
        format!("SECRETKEY-evt-{}", r.offset)
    } else {
        format!("evt-{}", r.offset)
    };
    event.model = r.model.into();
    event.api_key_id = Some(r.key.into());
    event.user_id = Some(r.user.into());
    event.team_id = r.team.map(str::to_string);
    event.occurred_at = t(r.at);
    event.received_at = t(r.at);
    event.usage.input_tokens = r.tokens;
    event.usage.output_tokens = r.tokens / 10;
    if other {
        event.end_user = Some("SECRETKEY-(unclosed".into());
        event.session_id = Some("SECRETKEY-session".into());
        event.region = Some("zz-other-region".into());
        event.request_id = Some("SECRETKEY-req".into());
        event
            .tags
            .insert("project".into(), "zz-other-project".into());
        event.source = "zz-other-edge".into();
    } else {
        event.end_user = Some("alice".into());
        event.region = Some("eu-west-1".into());
        event.tags.insert("project".into(), "ranking".into());
    }
    let c: Money = r.cost.parse().expect("fixture cost");
    Row {
        priced: PricedUsage {
            event,
            tenant: TenantPath {
                org: if other {
                    "zz-other-org".into()
                } else {
                    "acme".into()
                },
                business_unit: Some(if other { "zz-other-bu" } else { "products" }.into()),
                cost_center: r.team.map(|t| format!("cc-{t}")),
                team: r.team.map(str::to_string),
                project: Some(if other { "zz-other-project" } else { "ranking" }.into()),
                environment: Some(if other { "zz-other-env" } else { "prod" }.into()),
            },
            tenant_rule_id: Some(
                if other {
                    "SECRETKEY-rule"
                } else {
                    "rule-search"
                }
                .into(),
            ),
            price_id: if other {
                "zz-other-price".into()
            } else {
                "openai/gpt-4o".into()
            },
            price_version: 1,
            price_resolution: "exact".into(),
            model: r.model.into(),
            currency: "USD".into(),
            cost: CostLines {
                input: c,
                output: c,
                total: c + c,
                ..Default::default()
            },
            priced_at: t(r.at),
        },
        partition: 0,
        offset: r.offset,
    }
}

fn rows() -> Vec<Row> {
    let s = |offset, model, cost, at, tokens, key| R {
        offset,
        team: Some("search"),
        key,
        user: "u-search",
        model,
        cost,
        at,
        tokens,
    };
    let o = |offset, team, model| R {
        offset,
        team,
        key: "SECRETKEY-1",
        user: "SECRETKEY-user",
        model,
        cost: "98765.4321",
        at: "2031-07-13T13:37:42Z",
        tokens: 31_337,
    };
    [
        s(
            0,
            "gpt-4o",
            "1.25",
            "2026-11-20T10:00:00Z",
            100,
            "key-search-1",
        ),
        s(
            1,
            "gpt-4o-mini",
            "2.5",
            "2026-11-21T10:00:00Z",
            1000,
            "key-search-2",
        ),
        o(2, Some("zz-other"), "zz-other-model"),
        o(3, None, "SECRETKEY-unattributed-model"),
        o(4, Some("search-zz-other"), "gpt-4o"),
        s(
            5,
            "gpt-4o",
            "0.000000000000000001",
            "2026-11-22T10:00:00Z",
            7,
            "key-search-1",
        ),
        o(6, Some("Search"), "zz-other-Search"),
        s(
            7,
            "claude-sonnet-4",
            "0",
            "2026-11-22T11:00:00Z",
            0,
            "key-search-2",
        ),
    ]
    .iter()
    .map(row)
    .collect()
}

fn anomalies() -> Vec<Anomaly> {
    let a = |kind: ScopeKind, value: &str, model: &str, observed: &str| Anomaly {
        anomaly_id: format!("spend_spike/{value}/{model}"),
        scope: Scope {
            kind,
            value: value.into(),
        },
        model: Some(model.into()),
        kind: "spend_spike".into(),
        window_start: t("2026-11-20T10:00:00Z"),
        window_end: t("2026-11-20T11:00:00Z"),
        observed: observed.parse().expect("observed"),
        expected: "1".parse().expect("expected"),
        score: 9.0,
        method: "robust_z".into(),
        top_contributors: vec![],
        at: t("2026-11-20T11:00:05Z"),
    };
    vec![
        a(ScopeKind::Team, "search", "gpt-4o", "5"),
        a(ScopeKind::Team, "zz-other", "zz-other-model", "98765.4321"),
        a(ScopeKind::Org, "SECRETKEY-org", "gpt-4o", "98765.4321"),
        a(ScopeKind::ApiKey, "SECRETKEY-1", "gpt-4o", "98765.4321"),
    ]
}

fn budget_snapshot() -> BudgetSnapshot {
    let b = |id: &str, kind: ScopeKind, value: &str, limit: &str| BudgetChange {
        budget_id: id.into(),
        version: 1,
        name: format!("{id} budget"),
        scope: Scope {
            kind,
            value: value.into(),
        },
        limit: limit.parse().expect("limit"),
        currency: "USD".into(),
        period: PeriodKind::Month,
        timezone: "UTC".into(),
        custom_from: None,
        custom_to: None,
        thresholds: vec![Threshold {
            percent: 80,
            action: BudgetAction::Notify,
        }],
        webhooks: vec![],
        effective_from: t("2026-01-01T00:00:00Z"),
        effective_to: None,
        deleted: false,
        author: "fuzz".into(),
        reason: String::new(),
        changed_at: t("2026-01-01T00:00:00Z"),
    };
    let list = [
        b("search-monthly", ScopeKind::Team, "search", "100"),
        b(
            "SECRETKEY-zz-other-monthly",
            ScopeKind::Team,
            "zz-other",
            "98765.4321",
        ),
        b(
            "SECRETKEY-org-monthly",
            ScopeKind::Org,
            "SECRETKEY-org",
            "98765.4321",
        ),
    ];
    let mut snap = BudgetSnapshot::new(
        list.iter()
            .map(|b| (b.budget_id.clone(), b.clone()))
            .collect(),
        &[],
    );
    let now = meterline_fuzz::now();
    for (id, value, kind) in [
        ("search-monthly", "search", ScopeKind::Team),
        ("SECRETKEY-zz-other-monthly", "zz-other", ScopeKind::Team),
    ] {
        snap.view.apply_signal(BudgetSignal {
            budget_id: id.into(),
            scope: Scope {
                kind,
                value: value.into(),
            },
            // in force whatever the clock says (the table compares with the real now)
            period_start: t("2000-01-01T00:00:00Z"),
            period_end: t("2099-01-01T00:00:00Z"),
            state: BudgetState::Warning,
            spend: if value == "search" {
                "81".parse()
            } else {
                "98765.4321".parse()
            }
            .expect("spend"),
            // the budget's own limit: a signal on other terms is not in force
            limit: if value == "search" {
                "100".parse()
            } else {
                "98765.4321".parse()
            }
            .expect("limit"),
            currency: "USD".into(),
            threshold_percent: Some(80),
            action: BudgetAction::Notify,
            at: now,
        });
    }
    snap
}

/// The fixture, built once per process.
pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let rows = rows();
        let last = rows.iter().map(|r| r.offset).max().unwrap_or(0);
        Ledger::open(&LedgerConfig::default(), dir.path())
            .expect("ledger")
            .append(0, 0, last, &rows)
            .expect("ledger flush");
        meterline_ledger::AnomalyTable::open(&LedgerConfig::default(), dir.path())
            .expect("anomalies table")
            .replace_hour(t("2026-11-20T10:00:00Z"), &anomalies())
            .expect("anomalies");
        let cfg = ApiConfig {
            listen: "127.0.0.1:0".into(),
            data_dir: dir.path().to_path_buf(),
            max_rows: 1000,
            query_memory_bytes: 64 << 20,
            query_timeout_ms: 5_000,
            ..Default::default()
        };
        cfg.validate().expect("api config");
        let budgets = BudgetCache::default();
        budgets.set(budget_snapshot());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        // as App::build does it
        let shared = Arc::new(Shared {
            tokens: TokenTable::new(&cfg.tokens),
            kafka: None,
            ledger: LedgerView::open(&LedgerConfig::default(), &cfg.data_dir).expect("ledger view"),
            rollups: Default::default(),
            budgets: Arc::new(budgets),
            close_lock: Default::default(),
            queries: QueryRuntime::new(2).expect("query runtime"),
            cfg,
        });
        let f = Fixture {
            _dir: dir,
            shared,
            rt,
        };
        // The control: finance sees the markers (so the check below can fail), the lead its
        // own rows but none of them.
        let all = f.answer(&QueryScope::All, "SELECT * FROM usage", Format::Json);
        assert!(
            all.to_lowercase().contains("secretkey") && all.contains("98765.4321"),
            "fixture: finance does not see the other teams' rows: {all}"
        );
        let lead = f.answer(&lead(), "SELECT * FROM usage", Format::Json);
        assert!(
            lead.contains("key-search-1"),
            "fixture: the lead sees no row: {lead}"
        );
        assert_no_marker("SELECT * FROM usage", &lead);
        f
    })
}

pub fn lead() -> QueryScope {
    QueryScope::Teams(vec!["search".into()])
}

impl Fixture {
    /// Everything a client could read of the answer: status, body (or the transfer's error).
    pub fn answer(&self, scope: &QueryScope, sql: &str, format: Format) -> String {
        self.rt.block_on(async {
            let r = run_sql(&self.shared, scope.clone(), sql.to_string(), format).await;
            let status = r.status();
            let headers = format!("{:?}", r.headers());
            let body = match axum::body::to_bytes(r.into_body(), 256 << 20).await {
                Ok(b) => String::from_utf8_lossy(&b).into_owned(),
                Err(e) => format!("transfer error: {e}"),
            };
            format!("{status} {headers}\n{body}")
        })
    }
}

pub fn assert_no_marker(sql: &str, answer: &str) {
    let lower = answer.to_lowercase();
    for m in MARKERS {
        assert!(
            !lower.contains(m),
            "a team lead's answer shows another team's data ({m:?}).\nSQL: {sql}\nanswer: {answer}"
        );
    }
}

// ---------------------------------------------------------------- grammar

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Ty {
    Str,
    Int,
    Dec,
    Float,
    Ts,
    Bool,
}

use Ty::*;

const USAGE: &[(&str, Ty)] = &[
    ("event_id", Str),
    ("occurred_at", Ts),
    ("received_at", Ts),
    ("priced_at", Ts),
    ("source", Str),
    ("org", Str),
    ("business_unit", Str),
    ("cost_center", Str),
    ("team", Str),
    ("project", Str),
    ("environment", Str),
    ("tenant_rule_id", Str),
    ("api_key_id", Str),
    ("user_id", Str),
    ("end_user", Str),
    ("session_id", Str),
    ("tags", Str),
    ("provider", Str),
    ("model", Str),
    ("operation", Str),
    ("service_tier", Str),
    ("status", Str),
    ("http_status", Int),
    ("latency_ms", Int),
    ("region", Str),
    ("input_tokens", Int),
    ("cache_read_tokens", Int),
    ("output_tokens", Int),
    ("reasoning_tokens", Int),
    ("seconds", Dec),
    ("requests", Int),
    ("price_id", Str),
    ("price_version", Int),
    ("currency", Str),
    ("cost_input", Dec),
    ("cost_output", Dec),
    ("cost_total", Dec),
    ("gateway_reported_cost", Dec),
    ("kafka_partition", Int),
    ("kafka_offset", Int),
    ("model_reported", Str),
    ("price_resolution", Str),
    ("cache_hit", Bool),
    ("date", Str),
];

const ANOMALIES: &[(&str, Ty)] = &[
    ("anomaly_id", Str),
    ("scope_kind", Str),
    ("scope_value", Str),
    ("model", Str),
    ("kind", Str),
    ("window_start", Ts),
    ("window_end", Ts),
    ("observed", Dec),
    ("expected", Dec),
    ("score", Float),
    ("method", Str),
    ("top_contributors", Str),
    ("detected_at", Ts),
];

const BUDGETS: &[(&str, Ty)] = &[
    ("budget_id", Str),
    ("name", Str),
    ("version", Int),
    ("scope_kind", Str),
    ("scope_value", Str),
    ("team", Str),
    ("period", Str),
    ("limit_amount", Dec),
    ("currency", Str),
    ("thresholds", Str),
    ("state", Str),
    ("signal_spend", Dec),
    ("signal_threshold_percent", Int),
    ("signal_action", Str),
    ("signal_at", Ts),
];

const DAILY: &[(&str, Ty)] = &[
    ("date", Str),
    ("org", Str),
    ("cost_center", Str),
    ("team", Str),
    ("project", Str),
    ("provider", Str),
    ("model", Str),
    ("currency", Str),
    ("events", Int),
    ("input_tokens", Int),
    ("output_tokens", Int),
    ("cost", Dec),
];

const MONTHLY: &[(&str, Ty)] = &[
    ("month", Str),
    ("org", Str),
    ("team", Str),
    ("model", Str),
    ("events", Int),
    ("input_tokens", Int),
    ("cost", Dec),
];

const TABLES: &[(&str, &[(&str, Ty)])] = &[
    ("usage", USAGE),
    ("usage", USAGE),
    ("usage", USAGE),
    ("datafusion.public.usage", USAGE),
    ("anomalies", ANOMALIES),
    ("budgets", BUDGETS),
    ("daily_spend", DAILY),
    ("monthly_spend", MONTHLY),
];

/// A column in scope: its SQL reference and type.
#[derive(Clone, Debug)]
struct Col {
    sql: String,
    ty: Ty,
}

struct G<'a, 'b> {
    u: &'b mut Unstructured<'a>,
    /// Aliases handed out so far (t0, t1, …).
    next: usize,
}

impl G<'_, '_> {
    fn pick(&mut self, n: usize) -> usize {
        if n <= 1 {
            return 0;
        }
        self.u.choose_index(n).unwrap_or(0)
    }

    fn flip(&mut self) -> bool {
        self.u.arbitrary::<bool>().unwrap_or(false)
    }

    fn alias(&mut self) -> String {
        self.next += 1;
        format!("t{}", self.next)
    }

    fn col_of(&mut self, cols: &[Col], ty: Ty) -> Option<String> {
        let of: Vec<&Col> = cols.iter().filter(|c| c.ty == ty).collect();
        if of.is_empty() {
            return None;
        }
        let i = self.pick(of.len());
        Some(of[i].sql.clone())
    }

    fn lit(&mut self, ty: Ty) -> String {
        let pick = |g: &mut Self, xs: &[&str]| xs[g.pick(xs.len())].to_string();
        match ty {
            Str => pick(
                self,
                &[
                    "'search'",
                    "'gpt-4o'",
                    "''",
                    "'%'",
                    "'key-search-1'",
                    "'x'",
                    "NULL",
                    "'1'",
                    "'2026-11-20'",
                    "'(('",
                ],
            ),
            Int => pick(
                self,
                &[
                    "0", "1", "2", "3", "7", "10", "100", "-1", "1000000", "NULL",
                ],
            ),
            Dec => pick(
                self,
                &[
                    "1.25",
                    "0.5",
                    "0",
                    "CAST(2 AS DECIMAL(38, 18))",
                    "0.000000000000000001",
                    "NULL",
                ],
            ),
            Float => pick(self, &["1.5", "0.0", "-2.0", "'NaN'::DOUBLE", "NULL"]),
            Ts => pick(
                self,
                &[
                    "TIMESTAMP '2026-11-20T10:00:00Z'",
                    "now()",
                    "CAST('2026-11-21' AS TIMESTAMP)",
                    "NULL",
                ],
            ),
            Bool => pick(self, &["true", "false", "NULL"]),
        }
    }

    fn ty(&mut self) -> Ty {
        [Str, Int, Dec, Float, Ts, Bool, Str, Int][self.pick(8)]
    }

    fn cast_target(&mut self) -> (&'static str, Ty) {
        [
            ("VARCHAR", Str),
            ("BIGINT", Int),
            ("INT", Int),
            ("DECIMAL(38, 18)", Dec),
            ("DECIMAL(10, 2)", Dec),
            ("DOUBLE", Float),
            ("TIMESTAMP", Ts),
            ("DATE", Ts),
            ("BOOLEAN", Bool),
        ][self.pick(9)]
    }

    /// An expression of type `ty` over `cols`; `agg`: aggregates allowed here.
    fn expr(&mut self, ty: Ty, cols: &[Col], depth: u32, agg: bool) -> String {
        if depth == 0 || self.u.is_empty() {
            return self.col_of(cols, ty).unwrap_or_else(|| self.lit(ty));
        }
        let d = depth - 1;
        let choice = self.pick(16);
        match (choice, ty) {
            (0..=4, _) => self.col_of(cols, ty).unwrap_or_else(|| self.lit(ty)),
            (5, _) => self.lit(ty),
            (6, _) => {
                let from = self.ty();
                let (target, t) = self.cast_target();
                let inner = self.expr(from, cols, d, agg);
                if t == ty {
                    let c = ["CAST", "TRY_CAST"][self.pick(2)];
                    format!("{c}({inner} AS {target})")
                } else {
                    format!("CAST(CAST({inner} AS {target}) AS {})", sql_type(ty))
                }
            }
            (7, _) => {
                let p = self.pred(cols, d, agg);
                let a = self.expr(ty, cols, d, agg);
                let b = self.expr(ty, cols, d, agg);
                if self.flip() {
                    format!("CASE WHEN {p} THEN {a} ELSE {b} END")
                } else {
                    format!("CASE WHEN {p} THEN {a} END")
                }
            }
            (8, _) => {
                let a = self.expr(ty, cols, d, agg);
                let b = self.expr(ty, cols, d, agg);
                let f = ["COALESCE", "NULLIF", "GREATEST", "LEAST"][self.pick(4)];
                format!("{f}({a}, {b})")
            }
            (9, _) if agg => self.aggregate(ty, cols, d),
            (10, _) if depth >= 2 => {
                // a scalar subquery
                let (q, qcols) = self.select(d.min(1), Some(1));
                if qcols.first().map(|c| c.ty) == Some(ty) {
                    format!("({q})")
                } else {
                    format!("CAST(({q}) AS {})", sql_type(ty))
                }
            }
            (11, _) if agg => self.window(ty, cols, d),
            (_, Str) => self.str_fn(cols, d, agg),
            (_, Int) => self.int_fn(cols, d, agg),
            (_, Dec) => self.num_op(Dec, cols, d, agg),
            (_, Float) => self.float_fn(cols, d, agg),
            (_, Ts) => self.ts_fn(cols, d, agg),
            (_, Bool) => self.pred(cols, d, agg),
        }
    }

    fn str_fn(&mut self, cols: &[Col], d: u32, agg: bool) -> String {
        let a = self.expr(Str, cols, d, agg);
        match self.pick(12) {
            0 => format!("upper({a})"),
            1 => format!("lower({a})"),
            2 => format!("trim({a})"),
            3 => {
                let b = self.expr(Str, cols, d, agg);
                format!("concat({a}, {b})")
            }
            4 => {
                let i = self.expr(Int, cols, d, agg);
                format!("substr({a}, {i}, 3)")
            }
            5 => format!("split_part({a}, '-', 1)"),
            6 => {
                let b = self.expr(Str, cols, d, agg);
                format!("replace({a}, 'search', {b})")
            }
            7 => {
                let b = self.expr(Str, cols, d, agg);
                format!("regexp_replace({a}, {b}, 'x')")
            }
            8 => format!("{a} || '/' || {a}"),
            9 => {
                let t = self.ty();
                let x = self.expr(t, cols, d, agg);
                format!("arrow_typeof({x})")
            }
            10 => format!("left({a}, 4)"),
            _ => format!("md5({a})"),
        }
    }

    fn num_op(&mut self, ty: Ty, cols: &[Col], d: u32, agg: bool) -> String {
        let a = self.expr(ty, cols, d, agg);
        let b = self.expr(ty, cols, d, agg);
        let op = ["+", "-", "*", "/", "%"][self.pick(5)];
        format!("({a} {op} {b})")
    }

    fn int_fn(&mut self, cols: &[Col], d: u32, agg: bool) -> String {
        match self.pick(7) {
            0..=2 => self.num_op(Int, cols, d, agg),
            3 => {
                let s = self.expr(Str, cols, d, agg);
                format!("length({s})")
            }
            4 => {
                let s = self.expr(Str, cols, d, agg);
                format!("strpos({s}, 'e')")
            }
            5 => {
                let t = self.expr(Ts, cols, d, agg);
                let part = ["'day'", "'hour'", "'month'"][self.pick(3)];
                format!("CAST(date_part({part}, {t}) AS BIGINT)")
            }
            _ => {
                let a = self.expr(Int, cols, d, agg);
                format!("abs({a})")
            }
        }
    }

    fn float_fn(&mut self, cols: &[Col], d: u32, agg: bool) -> String {
        match self.pick(4) {
            0 => self.num_op(Float, cols, d, agg),
            1 => {
                let a = self.expr(Float, cols, d, agg);
                format!("sqrt({a})")
            }
            2 => {
                let a = self.expr(Dec, cols, d, agg);
                format!("CAST({a} AS DOUBLE) / 3")
            }
            _ => {
                let a = self.expr(Float, cols, d, agg);
                format!("ln({a})")
            }
        }
    }

    fn ts_fn(&mut self, cols: &[Col], d: u32, agg: bool) -> String {
        match self.pick(3) {
            0 => {
                let t = self.expr(Ts, cols, d, agg);
                let unit = ["'day'", "'hour'", "'month'"][self.pick(3)];
                format!("date_trunc({unit}, {t})")
            }
            1 => {
                let s = self.expr(Str, cols, d, agg);
                format!("to_timestamp({s})")
            }
            _ => {
                let s = self.expr(Str, cols, d, agg);
                format!("CAST({s} AS TIMESTAMP)")
            }
        }
    }

    fn aggregate(&mut self, ty: Ty, cols: &[Col], d: u32) -> String {
        // arguments of aggregates hold no aggregate
        match ty {
            Int => {
                let t = self.ty();
                let x = self.expr(t, cols, d, false);
                match self.pick(3) {
                    0 => format!("count({x})"),
                    1 => format!("count(DISTINCT {x})"),
                    _ => "count(*)".into(),
                }
            }
            Dec | Float => {
                let x = self.expr(ty, cols, d, false);
                let f = ["sum", "min", "max", "avg"][self.pick(4)];
                format!("{f}({x})")
            }
            Str => {
                let x = self.expr(Str, cols, d, false);
                match self.pick(4) {
                    0 => format!("string_agg({x}, ',')"),
                    1 => format!("min({x})"),
                    2 => format!("max({x})"),
                    _ => format!("first_value({x})"),
                }
            }
            Ts => {
                let x = self.expr(Ts, cols, d, false);
                format!("{}({x})", ["min", "max"][self.pick(2)])
            }
            Bool => {
                let x = self.pred(cols, d, false);
                format!("{}({x})", ["bool_and", "bool_or"][self.pick(2)])
            }
        }
    }

    fn window(&mut self, ty: Ty, cols: &[Col], d: u32) -> String {
        let part = self.col_of(cols, Str).unwrap_or_else(|| "1".into());
        let t = self.ty();
        let order = self.expr(t, cols, d, false);
        let over = format!("OVER (PARTITION BY {part} ORDER BY {order})");
        match ty {
            Int => format!("CAST(row_number() {over} AS BIGINT)"),
            _ => {
                let x = self.expr(ty, cols, d, false);
                let f = ["lag", "lead", "first_value", "last_value"][self.pick(4)];
                format!("{f}({x}) {over}")
            }
        }
    }

    fn pred(&mut self, cols: &[Col], depth: u32, agg: bool) -> String {
        if depth == 0 || self.u.is_empty() {
            let c = self.col_of(cols, Str).unwrap_or_else(|| "'x'".into());
            return format!("{c} = 'search'");
        }
        let d = depth - 1;
        match self.pick(14) {
            0..=2 => {
                let t = self.ty();
                let a = self.expr(t, cols, d, agg);
                let b = self.expr(t, cols, d, agg);
                let op = ["=", "<>", "<", "<=", ">", ">=", "IS DISTINCT FROM"][self.pick(7)];
                format!("{a} {op} {b}")
            }
            3 => {
                let t = self.ty();
                let a = self.expr(t, cols, d, agg);
                format!("{a} IS {}NULL", if self.flip() { "NOT " } else { "" })
            }
            4 => {
                let a = self.expr(Str, cols, d, agg);
                let pat = ["'search%'", "'%zz%'", "'%'", "'_%'", "'SECRET%'"][self.pick(5)];
                let op = ["LIKE", "ILIKE", "NOT LIKE"][self.pick(3)];
                format!("{a} {op} {pat}")
            }
            5 => {
                let t = self.ty();
                let a = self.expr(t, cols, d, agg);
                let l1 = self.lit(t);
                let l2 = self.lit(t);
                format!(
                    "{a} {}IN ({l1}, {l2})",
                    if self.flip() { "NOT " } else { "" }
                )
            }
            6 => {
                let a = self.pred(cols, d, agg);
                let b = self.pred(cols, d, agg);
                format!("({a} AND {b})")
            }
            7 => {
                let a = self.pred(cols, d, agg);
                let b = self.pred(cols, d, agg);
                format!("({a} OR {b})")
            }
            8 => {
                let a = self.pred(cols, d, agg);
                format!("NOT ({a})")
            }
            9 if depth >= 2 => {
                let (q, _) = self.select(d.min(1), None);
                format!("{}EXISTS ({q})", if self.flip() { "NOT " } else { "" })
            }
            10 if depth >= 2 => {
                let (q, qcols) = self.select(d.min(1), Some(1));
                let t = qcols.first().map(|c| c.ty).unwrap_or(Str);
                let a = self.expr(t, cols, d, agg);
                format!("{a} {}IN ({q})", if self.flip() { "NOT " } else { "" })
            }
            11 => {
                let a = self.expr(Int, cols, d, agg);
                let b = self.expr(Int, cols, d, agg);
                // division in a predicate: evaluated on rows the scope must have removed
                format!("({a} / {b}) > 0")
            }
            12 => {
                let s = self.expr(Str, cols, d, agg);
                let t = [
                    ("BIGINT", "0"),
                    ("TIMESTAMP", "TIMESTAMP '2000-01-01T00:00:00Z'"),
                    ("DECIMAL(10, 2)", "0"),
                ][self.pick(3)];
                format!("CAST({s} AS {}) > {}", t.0, t.1)
            }
            _ => {
                let a = self.expr(Str, cols, d, agg);
                let b = self.expr(Str, cols, d, agg);
                format!("regexp_like({a}, {b})")
            }
        }
    }

    /// A FROM clause and the columns it brings.
    fn from(&mut self, depth: u32) -> (String, Vec<Col>) {
        let table = |g: &mut Self| -> (String, Vec<Col>) {
            let (name, cols) = TABLES[g.pick(TABLES.len())];
            let a = g.alias();
            let cols = cols
                .iter()
                .map(|(c, ty)| Col {
                    sql: format!("{a}.{c}"),
                    ty: *ty,
                })
                .collect();
            (format!("{name} {a}"), cols)
        };
        match self.pick(8) {
            0..=3 => table(self),
            4 | 5 => {
                // usage joined with itself or another table
                let (l, mut lc) = table(self);
                let (r, rc) = table(self);
                let kind = [
                    "JOIN",
                    "LEFT JOIN",
                    "RIGHT JOIN",
                    "FULL OUTER JOIN",
                    "CROSS JOIN",
                ][self.pick(5)];
                let on = if kind == "CROSS JOIN" {
                    String::new()
                } else {
                    let ty = [Str, Int, Dec, Ts][self.pick(4)];
                    let a = self.col_of(&lc, ty).unwrap_or_else(|| self.lit(ty));
                    let b = self.col_of(&rc, ty).unwrap_or_else(|| self.lit(ty));
                    let op = ["=", "<>", "<", ">="][self.pick(4)];
                    format!(" ON {a} {op} {b}")
                };
                lc.extend(rc);
                (format!("{l} {kind} {r}{on}"), lc)
            }
            _ if depth >= 1 => {
                let (q, qcols) = self.select(depth - 1, None);
                let a = self.alias();
                let cols = qcols
                    .iter()
                    .map(|c| Col {
                        sql: format!("{a}.{}", c.sql),
                        ty: c.ty,
                    })
                    .collect();
                (format!("({q}) {a}"), cols)
            }
            _ => table(self),
        }
    }

    /// A SELECT; its output columns are named c0, c1, … `width`: an exact column count.
    fn select(&mut self, depth: u32, width: Option<usize>) -> (String, Vec<Col>) {
        let (from, cols) = self.from(depth);
        let n = width.unwrap_or_else(|| 1 + self.pick(4));
        let grouped = self.pick(3) == 0;
        let mut items = vec![];
        let mut out = vec![];
        let mut keys = vec![];
        for i in 0..n {
            let ty = self.ty();
            let e = if grouped && i == 0 {
                // a group key
                let k = self.col_of(&cols, ty).unwrap_or_else(|| self.lit(ty));
                keys.push(k.clone());
                k
            } else if grouped {
                self.aggregate(ty, &cols, depth.min(1))
            } else {
                self.expr(ty, &cols, depth.min(2), true)
            };
            items.push(format!("{e} AS c{i}"));
            out.push(Col {
                sql: format!("c{i}"),
                ty,
            });
        }
        let distinct = if self.pick(6) == 0 { "DISTINCT " } else { "" };
        let mut q = format!("SELECT {distinct}{} FROM {from}", items.join(", "));
        if self.flip() {
            let p = self.pred(&cols, depth.min(2), false);
            q.push_str(&format!(" WHERE {p}"));
        }
        if grouped && !keys.is_empty() {
            q.push_str(&format!(" GROUP BY {}", keys.join(", ")));
            if self.pick(3) == 0 {
                let h = self.aggregate(Int, &cols, 0);
                q.push_str(&format!(" HAVING {h} > 0"));
            }
        } else if grouped && self.pick(2) == 0 {
            q.push_str(" HAVING count(*) >= 0");
        }
        (q, out)
    }

    pub fn query(&mut self) -> String {
        let depth = 1 + self.pick(3) as u32;
        let cte = self.pick(5) == 0;
        let (mut q, cols) = self.select(depth, None);
        if cte {
            let (inner, _) = self.select(depth.min(2), None);
            q = format!("WITH w AS ({inner}) {q}");
        }
        if self.pick(4) == 0 {
            let op = ["UNION", "UNION ALL", "EXCEPT", "INTERSECT"][self.pick(4)];
            let (r, _) = self.select(depth.min(2), Some(cols.len()));
            q = format!("{q} {op} {r}");
        }
        if self.flip() {
            let k = 1 + self.pick(cols.len().max(1));
            q.push_str(&format!(
                " ORDER BY {k}{}",
                if self.flip() { " DESC" } else { "" }
            ));
        }
        if self.pick(3) == 0 {
            q.push_str(&format!(" LIMIT {}", [0, 1, 2, 5, 100][self.pick(5)]));
        }
        q
    }
}

fn sql_type(ty: Ty) -> &'static str {
    match ty {
        Str => "VARCHAR",
        Int => "BIGINT",
        Dec => "DECIMAL(38, 18)",
        Float => "DOUBLE",
        Ts => "TIMESTAMP",
        Bool => "BOOLEAN",
    }
}

/// A query from fuzzer bytes, and the answer format.
pub fn generate(data: &[u8]) -> (String, Format) {
    let mut u = Unstructured::new(data);
    let format = match u.arbitrary::<u8>().unwrap_or(0) % 8 {
        0 => Format::Csv,
        1 => Format::Arrow,
        _ => Format::Json,
    };
    // a few inputs carry a statement of their own (seeds, the escape attempts of
    // api/tests/sql_scope.rs): the rest of the bytes as text
    if u.arbitrary::<u8>().unwrap_or(0) == b'!' {
        let rest = u.take_rest();
        return (String::from_utf8_lossy(rest).into_owned(), format);
    }
    let mut g = G { u: &mut u, next: 0 };
    (g.query(), format)
}
