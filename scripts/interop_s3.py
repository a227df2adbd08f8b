#!/usr/bin/env python3
"""Snapshots on S3: fathom ships a data directory's snapshots to a real
S3-compatible server (moto's, on loopback), queries them from there, DuckDB
(httpfs) reads them straight from the endpoint with the same results, and a
ship killed in the middle of a multipart upload leaves no visible partial
object (the next ship completes the copy).

Usage: interop_s3.py FATHOM_BINARY DATA_DIR WORK_DIR
DATA_DIR holds a log with up-to-date snapshots. Exits non-zero on any
difference, naming it.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import boto3
import duckdb
import duckdb_extension_httpfs

BUCKET = "fathom-runs"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, what):
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not start on port {port}")


class KillingProxy(threading.Thread):
    """Forwards loopback TCP to the S3 server and SIGKILLs `victim` when a
    request for the second part of a multipart upload starts (the first
    part is then sent, the upload unfinished)."""

    def __init__(self, target_port):
        super().__init__(daemon=True)
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.target_port = target_port
        self.sent = 0
        self.victim = None
        self.killed = False
        self.lock = threading.Lock()

    def run(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self.pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self.pipe, args=(upstream, client, False), daemon=True).start()

    def pipe(self, src, dst, counting):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if counting:
                    with self.lock:
                        self.sent += len(data)
                        if b"partNumber=2" in data and not self.killed and self.victim is not None:
                            os.kill(self.victim.pid, signal.SIGKILL)
                            self.killed = True
                            return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass


def fathom(binary, data, env, *args, check=True):
    out = subprocess.run([binary, "--data", data, *args], env=env, capture_output=True, text=True)
    if check and out.returncode != 0:
        sys.exit(f"fathom {' '.join(args)} failed ({out.returncode}): {out.stderr}")
    return out


def sql(binary, data, env, extra, query):
    out = fathom(binary, data, env, "sql", "--format", "json", *extra, query)
    return json.loads(out.stdout)


def main():
    binary, data, work = sys.argv[1], sys.argv[2], sys.argv[3]
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, "the moto S3 server")
        endpoint = f"http://127.0.0.1:{port}"
        creds = {"AWS_ACCESS_KEY_ID": "fathom", "AWS_SECRET_ACCESS_KEY": "fathom-secret", "AWS_REGION": "us-east-1"}
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"])
        s3.create_bucket(Bucket=BUCKET)
        env = dict(os.environ, **creds, AWS_ENDPOINT_URL=endpoint, AWS_ALLOW_HTTP="true")
        env.pop("FATHOM_SNAPSHOTS", None)
        url = f"s3://{BUCKET}/machine-a"

        # 1. Ship, then query from S3 alone: the same tables as the local files.
        fathom(binary, data, env, "--snapshots", url, "snapshot")
        manifest = json.loads(s3.get_object(Bucket=BUCKET, Key="machine-a/manifest.json")["Body"].read())
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="machine-a/").get("Contents", [])}
        named = {"machine-a/" + f["path"] for f in manifest["files"]} | {"machine-a/manifest.json"}
        if keys != named:
            sys.exit(f"the bucket holds {sorted(keys ^ named)} beyond or short of the manifest")
        q = ("SELECT count(*) AS n, sum(reward) AS reward, count(DISTINCT run_id) AS runs, "
             "(SELECT count(*) FROM turns) AS turns FROM episodes")
        local = sql(binary, data, env, ["--snapshots-only"], q)
        remote = sql(binary, os.path.join(work, "nowhere"), env, ["--snapshots", url], q)
        if local != remote:
            sys.exit(f"fathom sql over S3 gives {remote}, the local files {local}")
        print(f"shipped {len(manifest['files'])} files; fathom sql over S3: {remote[0]}")

        # 1b. A Ballista cluster over the same S3 snapshots: a scheduler and
        # two executors, each with the credentials in its environment, plan
        # and read the files from the bucket.
        cluster_procs = []
        try:
            sched_port = free_port()
            cluster_procs.append(subprocess.Popen(
                [binary, "cluster", "scheduler", "--addr", f"127.0.0.1:{sched_port}"],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_port(sched_port, "the Ballista scheduler")
            for _ in range(2):
                cluster_procs.append(subprocess.Popen(
                    [binary, "cluster", "executor", "--scheduler", f"df://127.0.0.1:{sched_port}",
                     "--port", str(free_port()), "--grpc-port", str(free_port()), "--concurrency", "1"],
                    env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            cluster = f"df://127.0.0.1:{sched_port}"
            out = None
            for _ in range(120):
                out = fathom(binary, os.path.join(work, "nowhere"), env, "sql", "--format", "json",
                             "--cluster", cluster, "--snapshots", url, q, check=False)
                if out.returncode == 0:
                    break
                time.sleep(0.5)
            if out.returncode != 0:
                sys.exit(f"fathom sql --cluster over S3 failed: {out.stderr}")
            distributed = json.loads(out.stdout)
            if distributed != local:
                sys.exit(f"the cluster over S3 gives {distributed}, the local files {local}")
            print(f"a Ballista scheduler and two executors over S3: {distributed[0]}")
        finally:
            for p in cluster_procs:
                p.terminate()
                p.wait()

        # 2. DuckDB reads the run's snapshots straight from the endpoint.
        con = duckdb.connect()
        ext = os.path.join(os.path.dirname(duckdb_extension_httpfs.__file__), "extensions",
                           f"v{duckdb.__version__}", "httpfs.duckdb_extension")
        con.execute(f"LOAD '{ext}'")
        con.execute(f"""CREATE SECRET s3 (TYPE s3, KEY_ID '{creds["AWS_ACCESS_KEY_ID"]}',
                        SECRET '{creds["AWS_SECRET_ACCESS_KEY"]}', REGION 'us-east-1',
                        ENDPOINT '127.0.0.1:{port}', URL_STYLE 'path', USE_SSL false)""")

        def files(table):
            return "[" + ", ".join(f"'s3://{BUCKET}/machine-a/{f['path']}'" for f in manifest["files"]
                                   if f["table"] == table) + "]"
        n, reward, runs = con.execute(
            f"SELECT count(*), sum(reward), count(DISTINCT run_id) FROM read_parquet({files('episodes')})").fetchone()
        turns = con.execute(f"SELECT count(*) FROM read_parquet({files('turns')})").fetchone()[0]
        got = {"n": n, "reward": reward, "runs": runs, "turns": turns}
        want = local[0]
        if any(abs(float(got[k]) - float(want[k])) > 1e-9 for k in want):
            sys.exit(f"DuckDB over S3 reads {got}, fathom {want}")
        print(f"DuckDB (httpfs) over S3 reads the same: {got}")

        # 3. A ship killed in the middle of a multipart upload.
        big = os.path.join(work, "big")
        fathom(binary, big, env, "--snapshot-every", "off", "log", "load", "--episodes", "6000")
        fathom(binary, big, env, "snapshot", "--window", "10000000")
        sizes = {f["path"]: f["bytes"] for f in
                 json.load(open(os.path.join(big, "snapshots", "manifest.json")))["files"]}
        part = 5 << 20
        largest = max(sizes.values())
        if largest <= part:
            sys.exit(f"the largest snapshot file is {largest} bytes; the test needs one over {part}")
        proxy = KillingProxy(port)
        proxy.start()
        penv = dict(env, AWS_ENDPOINT_URL=f"http://127.0.0.1:{proxy.port}", FATHOM_SNAPSHOTS_PART_BYTES=str(part))
        proc = subprocess.Popen([binary, "--data", big, "--snapshots", f"s3://{BUCKET}/machine-b", "snapshot"],
                                env=penv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        proxy.victim = proc
        proc.wait(timeout=300)
        if proc.returncode != -signal.SIGKILL:
            sys.exit(f"the ship was not killed mid-upload (exit {proc.returncode}, {proxy.sent} bytes sent)")
        uploads = s3.list_multipart_uploads(Bucket=BUCKET, Prefix="machine-b/").get("Uploads", [])
        if not uploads:
            sys.exit("no multipart upload was in flight when the ship was killed")
        visible = s3.list_objects_v2(Bucket=BUCKET, Prefix="machine-b/").get("Contents", [])
        for o in visible:
            rel = o["Key"][len("machine-b/"):]
            if rel == "manifest.json":
                sys.exit("the killed ship wrote a manifest")
            body = s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()
            if body != open(os.path.join(big, "snapshots", rel), "rb").read():
                sys.exit(f"{o['Key']} is visible but not the whole file ({len(body)} of {sizes.get(rel)} bytes)")
        in_flight = {u["Key"] for u in uploads}
        if in_flight & {o["Key"] for o in visible}:
            sys.exit(f"an object being uploaded is visible: {in_flight}")
        print(f"killed after {proxy.sent} bytes: {len(visible)} complete object(s) visible, "
              f"{len(uploads)} unfinished multipart upload(s) invisible, no manifest")
        # The next ship completes the copy and reads back the same.
        fathom(binary, big, env, "--snapshots", f"s3://{BUCKET}/machine-b", "snapshot")
        q = "SELECT count(*) AS n, sum(n_tokens) AS tokens FROM turns"
        a = sql(binary, big, env, ["--snapshots-only"], q)
        b = sql(binary, os.path.join(work, "nowhere"), env, ["--snapshots", f"s3://{BUCKET}/machine-b"], q)
        if a != b:
            sys.exit(f"after the second ship S3 gives {b}, the local files {a}")
        # Both machines' runs side by side.
        cat = sql(binary, os.path.join(work, "nowhere"), env, ["--catalog", f"s3://{BUCKET}/"],
                  "SELECT origin, count(*) AS n FROM episodes GROUP BY origin ORDER BY origin")
        if [r["origin"] for r in cat] != ["machine-a", "machine-b"] or cat[0]["n"] != local[0]["n"]:
            sys.exit(f"the catalogue over S3 gives {cat}")
        print(f"second ship complete; catalogue over S3: {cat}")
        print("ok")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
