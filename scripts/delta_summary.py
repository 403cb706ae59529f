#!/usr/bin/env python3
"""What an engine nobody at meterline wrote sees of a ledger's Delta table.

Usage: delta_summary.py <data_dir>/usage  — prints one JSON object: table version, row count,
sorted event ids, the exact Decimal sum of cost_total, the active files, and the txn version
of priced partitions 0..15 (`meterline-usage-p<N>`). Reads with the `deltalake` package from
PyPI (delta-rs's Python reader; `scripts/setup-python` installs it into
$METERLINE_DELTA_PY_HOME). Used by ledger/tests/delta_log.rs and tests/aggregate_exactly_once.rs.
"""
import json
import sys

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

t = DeltaTable(sys.argv[1])
a = t.to_pyarrow_table(columns=["event_id", "cost_total", "date"])
total = pc.sum(a["cost_total"]).as_py()
txn = {}
for p in range(16):
    v = t.transaction_version(f"meterline-usage-p{p}")
    if v is not None:
        txn[str(p)] = v
print(json.dumps({
    "version": t.version(),
    "rows": a.num_rows,
    "events": sorted(a["event_id"].to_pylist()),
    "cost": None if total is None else format(total, "f"),
    "files": sorted(pa.table(t.get_add_actions(flatten=True)).column("path").to_pylist()),
    "txn": txn,
}))
