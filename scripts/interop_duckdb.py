#!/usr/bin/env python3
"""Interop check: DuckDB reads fathom's Parquet snapshots as they are and
gets the same counts and aggregates as `fathom sql`.

Usage: interop_duckdb.py FATHOM_BINARY DATA_DIR
The data directory must hold a log whose snapshots are up to date
(`fathom snapshot`). Exits non-zero, naming the query, on any difference.
"""

import glob
import json
import math
import subprocess
import sys

import duckdb

TABLES = [
    "runs", "questions", "episodes", "turns", "tool_calls", "web_requests",
    "segments", "behaviours", "updates", "checkpoints", "evals", "events",
]

# Standard SQL both engines run unchanged.
QUERIES = [
    "SELECT count(*) AS n FROM {t}",
    # Per-step aggregates (the step_metrics view, spelled out).
    """SELECT run_id, step, count(*) AS episodes, avg(reward) AS reward, stddev_pop(reward) AS reward_std,
              avg(f1) AS f1, avg(em) AS em,
              avg(CASE WHEN format_ok THEN 0.0 ELSE 1.0 END) AS format_failures,
              sum(n_tool_calls) AS tool_calls, sum(n_tokens) AS tokens
       FROM episodes WHERE ended_by <> 'aborted' GROUP BY run_id, step ORDER BY run_id, step""",
    """SELECT data_source, hops, count(*) AS n, avg(f1) AS f1, max(n_searches) AS max_searches
       FROM episodes GROUP BY data_source, hops ORDER BY data_source, hops""",
    """SELECT role, count(*) AS n, sum(n_tokens) AS tokens, sum(length(text)) AS chars
       FROM turns GROUP BY role ORDER BY role""",
    """SELECT kind, status, count(*) AS n, sum(bytes) AS bytes, avg(latency_ms) AS latency
       FROM web_requests GROUP BY kind, status ORDER BY kind, status""",
    """SELECT kind, count(DISTINCT episode_id) AS episodes FROM behaviours GROUP BY kind ORDER BY kind""",
    """SELECT step, loss, kl, entropy, lr FROM updates ORDER BY step""",
    """SELECT tool, count(*) AS n, sum(CASE WHEN ok THEN 1 ELSE 0 END) AS ok FROM tool_calls GROUP BY tool ORDER BY tool""",
    """SELECT min(seq) AS lo, max(seq) AS hi, count(DISTINCT seq) AS n FROM events""",
    """SELECT epoch_us(max(finished_at)) - epoch_us(min(started_at)) AS span_us FROM episodes""",
]


def fathom_sql(binary, data, query):
    out = subprocess.run(
        [binary, "--data", data, "sql", "--snapshots-only", "--format", "json", query],
        capture_output=True, text=True,
    )
    if out.returncode != 0:
        sys.exit(f"fathom sql failed on {query!r}: {out.stderr}")
    return json.loads(out.stdout)


def same(a, b):
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is None and b is None
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)
    return a == b


def main():
    binary, data = sys.argv[1], sys.argv[2]
    con = duckdb.connect()
    # A table with no rows yet has no files (and no directory).
    present = [t for t in TABLES if glob.glob(f"{data}/snapshots/{t}/*.parquet")]
    for t in present:
        con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{data}/snapshots/{t}/*.parquet')")
    for t in set(TABLES) - set(present):
        n = fathom_sql(binary, data, f"SELECT count(*) AS n FROM {t}")[0]["n"]
        if n != 0:
            sys.exit(f"table {t} has {n} rows in fathom sql but no snapshot files")
    checked = 0
    for template in QUERIES:
        queries = [template.format(t=t) for t in present] if "{t}" in template else [template]
        for q in queries:
            # Timestamps as integers: DuckDB's epoch_us is a cast in DataFusion.
            fq = q.replace("epoch_us(max(finished_at)) - epoch_us(min(started_at))",
                           "CAST(max(finished_at) AS BIGINT) - CAST(min(started_at) AS BIGINT)")
            theirs = con.execute(q)
            cols = [d[0] for d in theirs.description]
            duck_rows = [dict(zip(cols, r)) for r in theirs.fetchall()]
            ours = fathom_sql(binary, data, fq)
            if len(ours) != len(duck_rows):
                sys.exit(f"row count differs for {q!r}: fathom {len(ours)}, duckdb {len(duck_rows)}")
            for o, d in zip(ours, duck_rows):
                for c in cols:
                    ov, dv = o.get(c), d[c]
                    if hasattr(dv, "item"):
                        dv = dv.item()
                    if not same(ov, dv):
                        sys.exit(f"value differs for {q!r}, column {c}: fathom {ov!r}, duckdb {dv!r}")
            checked += 1
    print(f"duckdb interop: {checked} queries give the same results from the Parquet snapshots")


if __name__ == "__main__":
    main()
