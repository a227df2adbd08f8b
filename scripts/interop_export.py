"""Reads fathom's exports back with other tools: the WARC file with warcio
(every record's block and payload digest checked), the JSON lines with
Hugging Face `datasets`. Usage: interop_export.py FATHOM DATA OUTDIR"""

import json
import os
import subprocess
import sys

fathom, data, out = sys.argv[1:4]
# Keep the datasets cache out of the home directory, and off the network.
os.environ["HF_HOME"] = f"{out}/hf"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

import datasets  # noqa: E402
from warcio.archiveiterator import ArchiveIterator  # noqa: E402
from warcio.cli import main as warcio_main  # noqa: E402


def sql(query):
    text = subprocess.run(
        [fathom, "--data", data, "sql", "--format", "json", query], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(text)


warc = f"{out}/web.warc"
jsonl = f"{out}/trajectories.jsonl"
subprocess.run([fathom, "--data", data, "export", "--format", "warc", "--out", warc], check=True)
subprocess.run([fathom, "--data", data, "export", "--format", "jsonl", "--out", jsonl], check=True)

# 1. warcio: every record parses, and every digest is checked ('raise' fails on a bad one).
kinds = {}
checked = 0
targets = set()
with open(warc, "rb") as f:
    for record in ArchiveIterator(f, check_digests="raise"):
        kinds[record.rec_type] = kinds.get(record.rec_type, 0) + 1
        record.content_stream().read()
        assert record.rec_headers.get_header("WARC-Block-Digest"), record.rec_headers
        checked += 1
        if record.rec_type == "response":
            target = record.rec_headers.get_header("WARC-Target-URI")
            targets.add(target)
            if target.startswith("http"):
                assert record.rec_headers.get_header("WARC-Payload-Digest"), record.rec_headers
                assert record.http_headers.get_statuscode(), record.rec_headers
# `warcio check` agrees (exit status 0 means every digest matched).
try:
    status = warcio_main(["check", warc])
except SystemExit as e:
    status = e.code
assert status in (0, None), f"warcio check exited {status}"

requests = sql("SELECT count(*) AS n, sum(CASE WHEN status > 0 THEN 1 ELSE 0 END) AS answered FROM web_requests")[0]
assert kinds.get("warcinfo") == 1, kinds
assert kinds.get("request") == requests["n"], (kinds, requests)
assert kinds.get("response") == requests["answered"], (kinds, requests)
assert any(t.startswith("http://127.0.0.1:") for t in targets), targets
assert any(t.startswith("urn:fathom:search:") for t in targets), targets

# A flipped byte in a body must fail the check.
raw = bytearray(open(warc, "rb").read())
at = raw.index(b"<html") + 10
raw[at] = ord("X") if raw[at] != ord("X") else ord("Y")
bad = f"{out}/tampered.warc"
open(bad, "wb").write(raw)
try:
    with open(bad, "rb") as f:
        for record in ArchiveIterator(f, check_digests="raise"):
            record.content_stream().read()
    raise SystemExit("warcio accepted a tampered body")
except Exception as e:  # warcio raises ArchiveLoadFailed on a digest mismatch
    assert "digest" in str(e).lower(), e

# 2. datasets: the JSON lines load as a dataset of chat messages.
ds = datasets.load_dataset("json", data_files=jsonl, split="train")
episodes = sql("SELECT count(*) AS n FROM episodes WHERE ended_by <> 'aborted'")[0]["n"]
assert len(ds) == episodes, (len(ds), episodes)
row = ds[0]
assert [m["role"] for m in row["messages"][:3]] == ["system", "user", "assistant"], row["messages"][:3]
assert all(m["role"] in ("system", "user", "assistant") for r in ds for m in r["messages"])
assert set(["reward", "f1", "em", "run_id", "episode_id", "ground_truths", "question"]) <= set(ds.column_names)
solved = [r for r in ds if r["reward"] == 1.0 and r["run_kind"] == "eval"]
assert solved and all("<answer>" in r["messages"][-1]["content"] for r in solved)

print(
    f"ok: warcio read {checked} WARC records ({kinds}) with every digest checked; "
    f"datasets loaded {len(ds)} trajectories"
)
