//! SQL as a team lead (`search`): a query generated from the bytes (a grammar over the real
//! tables, views and columns — see `meterline_fuzz::sql`) runs in a session built by
//! `meterline_api::query_session` under `QueryScope::Teams(["search"])` and is answered by
//! `meterline_api::run_sql` (JSON, CSV or Arrow IPC). Property: no panic (in any thread),
//! and no answer, status or error text carries a marker of another team's rows.
#![no_main]

use libfuzzer_sys::fuzz_target;
// In the target, not in the shared lib: the other targets then do not link DataFusion.
#[path = "sql_team_lead/fixture.rs"]
mod sql;

use sql::{assert_no_marker, fixture, generate, lead};

fuzz_target!(
    init: {
        let _ = fixture();
    },
    |data: &[u8]| {
        let (sql, format) = generate(data);
        if std::env::var_os("METERLINE_FUZZ_SHOW_SQL").is_some() {
            eprintln!("SQL: {sql}");
        }
        let answer = fixture().answer(&lead(), &sql, format);
        assert_no_marker(&sql, &answer);
    }
);
