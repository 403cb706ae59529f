#!/usr/bin/env python3
"""Derives src/loadgen/requests.csv from the Azure LLM inference trace 2023 and the Mooncake
FAST'25 conversation trace (see README.md beside this file). Standard library only.

    python3 src/loadgen/derive_fixture.py /path/to/datasets > src/loadgen/requests.csv
"""
import csv
import json
import sys
from pathlib import Path

ROWS_PER_TRACE = 200
BLOCK = 512


def every_kth(rows, n):
    k = max(1, len(rows) // n)
    return rows[::k][:n]


def main(root):
    root = Path(root)
    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow(["trace", "input_tokens", "output_tokens", "cached_tokens"])
    for name, tag in (("conv", "azure_conv"), ("code", "azure_code")):
        with open(root / "azure_llm_inference_2023" / f"AzureLLMInferenceTrace_{name}.csv") as f:
            rows = [(int(r["ContextTokens"]), int(r["GeneratedTokens"])) for r in csv.DictReader(f)]
        for i, o in every_kth(rows, ROWS_PER_TRACE):
            out.writerow([tag, i, o, 0])
    # Mooncake: cache hits of an unbounded prefix cache over the 512-token hash_ids blocks,
    # simulated over the whole trace in order, then every k-th request kept.
    seen = set()
    rows = []
    with open(root / "mooncake_fast25" / "conversation_trace.jsonl") as f:
        for line in f:
            r = json.loads(line)
            hit = 0
            for h in r["hash_ids"]:
                if h not in seen:
                    break
                hit += 1
            seen.update(r["hash_ids"])
            rows.append((r["input_length"], r["output_length"], min(hit * BLOCK, r["input_length"])))
    for i, o, c in every_kth(rows, ROWS_PER_TRACE):
        out.writerow(["mooncake", i, o, c])


if __name__ == "__main__":
    main(sys.argv[1])
