"""Re-reads a meterline FOCUS CSV export the way FOCUS types it, for the official validator:
api/tests/focus12/official.rs runs it with the validator venv's interpreter (pyarrow).

    typed.py <in.csv> <out.parquet>

CSV carries no types, and focus-validator 2.2.1 infers them: a column of whole numbers becomes
an integer, which fails "ConsumedQuantity MUST be of type Decimal" although FOCUS's Decimal
includes whole numbers. Here the two quantity columns are read as Decimal. And the validator
evaluates ConsumedQuantity-C-005-C's condition on CommitmentDiscountStatus even when that
conditional column is absent (meterline has no commitment discounts, so it does not export
it); here it is added, null on every row, which is what its absence means. Nothing else is
touched: every other column keeps the type the CSV reader gives it."""
import sys

import pyarrow as pa
import pyarrow.csv as pc
import pyarrow.parquet as pq

src, dst = sys.argv[1], sys.argv[2]
decimal = pa.decimal128(38, 12)
table = pc.read_csv(
    src,
    convert_options=pc.ConvertOptions(
        strings_can_be_null=True,
        column_types={"ConsumedQuantity": decimal, "PricingQuantity": decimal},
    ),
)
if "CommitmentDiscountStatus" not in table.column_names:
    table = table.append_column(
        "CommitmentDiscountStatus", pa.nulls(table.num_rows, pa.string())
    )
pq.write_table(table, dst)
