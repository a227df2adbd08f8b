#!/usr/bin/env python3
"""SQL benchmark: a seeded synthetic log of 100,000 episodes, snapshotted to
Parquet, then the cookbook queries timed with `fathom sql` and with DuckDB
over the same Parquet files, in the same run.

Usage: bench_sql.py FATHOM_BINARY DATA_DIR [EPISODES] [REPEATS]
Prints a Markdown report (the figures of docs/BENCHMARKS.md).
"""

import glob
import json
import os
import re
import statistics
import subprocess
import sys
import time

import duckdb

COOKBOOK = [
    ("reward by step and source",
     "SELECT step, data_source, count(*) AS episodes, round(avg(reward), 3) AS reward FROM episodes "
     "WHERE ended_by <> 'aborted' GROUP BY step, data_source ORDER BY step, data_source"),
    ("searched >5 times and failed",
     "SELECT episode_id, step, n_searches, f1 FROM episodes WHERE n_searches > 5 AND f1 = 0 "
     "ORDER BY episode_id LIMIT 100"),
    ("self-reflection before/after step 400",
     "SELECT CASE WHEN e.step < 400 THEN 'before' ELSE 'after' END AS phase, count(*) AS episodes, "
     "avg(CASE WHEN b.episode_id IS NULL THEN 0.0 ELSE 1.0 END) AS rate FROM episodes e "
     "LEFT JOIN (SELECT DISTINCT episode_id FROM behaviours WHERE kind = 'self_reflection') b "
     "ON e.episode_id = b.episode_id WHERE e.ended_by <> 'aborted' GROUP BY 1 ORDER BY 1"),
    ("tool calls by hop count",
     "SELECT hops, count(*) AS n, avg(n_tool_calls) AS calls FROM episodes GROUP BY hops ORDER BY hops"),
    ("step metrics (the view's query)",
     "SELECT run_id, step, count(*) AS episodes, avg(reward) AS reward_mean, stddev_pop(reward) AS reward_std, "
     "avg(f1) AS f1, avg(em) AS em, avg(CASE WHEN format_ok THEN 0.0 ELSE 1.0 END) AS format_failure_rate "
     "FROM episodes WHERE ended_by <> 'aborted' GROUP BY run_id, step ORDER BY run_id, step"),
    ("slowest web requests",
     "SELECT request_id, kind, latency_ms FROM web_requests ORDER BY latency_ms DESC LIMIT 3"),
    ("requests per kind and status",
     "SELECT kind, status, count(*) AS n, avg(latency_ms) AS latency FROM web_requests "
     "GROUP BY kind, status ORDER BY kind, status"),
    ("one trajectory",
     "SELECT turn, role, text FROM turns WHERE episode_id = 'e-50000' ORDER BY turn, role"),
    ("turn tokens by role",
     "SELECT role, count(*) AS n, sum(n_tokens) AS tokens FROM turns GROUP BY role ORDER BY role"),
]

TABLES = ["runs", "questions", "episodes", "turns", "tool_calls", "web_requests",
          "segments", "behaviours", "updates", "checkpoints", "evals", "events"]


def run(cmd, **kw):
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, **kw)
    dt = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{out.stderr}")
    return out, dt


def main():
    fathom, data = sys.argv[1], sys.argv[2]
    episodes = int(sys.argv[3]) if len(sys.argv) > 3 else 100_000
    repeats = int(sys.argv[4]) if len(sys.argv) > 4 else 5
    threads = os.cpu_count() or 2
    print(f"# SQL benchmark: {episodes} synthetic episodes, {threads} cores\n")

    if not os.path.exists(os.path.join(data, "log")):
        out, dt = run([fathom, "--data", data, "--snapshot-every", "off", "log", "load",
                       "--episodes", str(episodes), "--seed", "1"])
        print(f"- log written in {dt:.1f} s: {out.stdout.strip().splitlines()[0]}")
    stats = json.loads(run([fathom, "--data", data, "log", "stats", "--json"])[0].stdout)
    by_kind = {k: v["events"] for k, v in stats["by_kind"].items()}
    total_events = sum(by_kind.values())
    print(f"- events: {total_events:,} ({by_kind.get('turn_generated', 0):,} model turns, "
          f"{by_kind.get('web_exchange', 0):,} web requests, {by_kind.get('episode_finished', 0):,} episodes)")

    if not os.path.exists(os.path.join(data, "snapshots", "manifest.json")):
        out, dt = run([fathom, "--data", data, "snapshot", "--json"])
        report = json.loads(out.stdout)
        print(f"- snapshot: {report['events']:,} events in {dt:.1f} s = "
              f"{report['events'] / dt:,.0f} events/s; {report['files_written']} files, "
              f"{report['bytes_written'] / 2**20:.0f} MiB written")

    # Parquet against JSON lines of the same rows.
    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    present = [t for t in TABLES if glob.glob(f"{data}/snapshots/{t}/*.parquet")]
    for t in present:
        con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{data}/snapshots/{t}/*.parquet')")
    pq_total = js_total = 0
    print("\n| table | rows | Parquet MiB | JSON lines MiB | ratio |\n|---|---:|---:|---:|---:|")
    jdir = os.path.join(data, "jsonl")
    os.makedirs(jdir, exist_ok=True)
    for t in present:
        pq = sum(os.path.getsize(f) for f in glob.glob(f"{data}/snapshots/{t}/*.parquet"))
        jpath = os.path.join(jdir, f"{t}.jsonl")
        if not os.path.exists(jpath):
            con.execute(f"COPY (SELECT * FROM {t}) TO '{jpath}' (FORMAT JSON)")
        js = os.path.getsize(jpath)
        rows = con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
        pq_total += pq
        js_total += js
        print(f"| {t} | {rows:,} | {pq / 2**20:.1f} | {js / 2**20:.1f} | {pq / js:.3f} |")
    print(f"| **all** | | {pq_total / 2**20:.1f} | {js_total / 2**20:.1f} | {pq_total / js_total:.3f} |")

    print(f"\n| query | fathom sql: query ms (median of {repeats}) | fathom sql: whole command ms | DuckDB ms | fathom / DuckDB |")
    print("|---|---:|---:|---:|---:|")
    worst = 0.0
    for name, q in COOKBOOK:
        ours, whole = [], []
        for _ in range(repeats):
            out, dt = run([fathom, "--data", data, "sql", "--timing", "--format", "csv", q])
            m = re.search(r"query ([0-9.]+) ms", out.stderr)
            ours.append(float(m.group(1)))
            whole.append(dt * 1000)
        theirs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            con.execute(q).fetchall()
            theirs.append((time.perf_counter() - t0) * 1000)
        o, w, d = statistics.median(ours), statistics.median(whole), statistics.median(theirs)
        worst = max(worst, o)
        print(f"| {name} | {o:.1f} | {w:.0f} | {d:.1f} | {o / d:.2f} |")
    print(f"\nslowest cookbook query in fathom sql: {worst:.1f} ms (target: under 300 ms)")


if __name__ == "__main__":
    main()
