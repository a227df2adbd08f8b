"""Dashboard load benchmark: `fathom serve` over a large log while a writer
appends, and CLIENTS concurrent clients loading the run page and episode
pages for SECONDS. Reports errors, latency percentiles seen by the clients,
and the server's own time per page (its Server-Timing header).

usage: bench_web.py FATHOM DATA CLIENTS SECONDS
"""
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else float("nan")


def get(host, port, path, conn=None):
    """One GET; over `conn` (kept alive, as a browser does) when given."""
    c = conn or http.client.HTTPConnection(host, port, timeout=30)
    t0 = time.perf_counter()
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    dt = (time.perf_counter() - t0) * 1000
    timing = r.getheader("server-timing") or ""
    server = float(timing.split("dur=")[1]) if "dur=" in timing else float("nan")
    if conn is None:
        c.close()
    return r.status, dt, server, body


def main():
    fathom, data, clients, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    sock = os.path.join(data, "tail.sock")
    # A training run's pace: one step of 128 episodes (about 7,000 events)
    # every second, snapshotted in the background as `fathom train` does.
    writer = subprocess.Popen([fathom, "--data", data, "log", "load", "--episodes", "1000000", "--seed", "7",
                               "--step-interval-ms", "1000"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        if os.path.exists(sock):
            break
        time.sleep(0.1)
    else:
        sys.exit("the writer did not start its read endpoint")
    server = subprocess.Popen([fathom, "--data", data, "serve", "--addr", "127.0.0.1:0"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    line = server.stderr.readline()
    addr = next(w for w in line.split() if w.startswith("http://")).removeprefix("http://").rstrip("/")
    host, port = addr.split(":")
    port = int(port)
    try:
        status, dt, _, body = get(host, port, "/api/sql?q=" + "SELECT%20episode_id%20FROM%20episodes%20WHERE%20run_id%20%3D%20%27r-1%27%20ORDER%20BY%20random()%20LIMIT%20500")
        assert status == 200, body[:500]
        episodes = [r["episode_id"] for r in json.loads(body)["rows"]]
        status, dt, _, body = get(host, port, "/runs/r-1")
        assert status == 200, body[:500]
        print(f"first run page (cold): {dt:.0f} ms")
        results = []
        lock = threading.Lock()
        stop = time.perf_counter() + seconds

        def client(k):
            rnd = random.Random(k)
            local = []
            i = 0
            conn = http.client.HTTPConnection(host, port, timeout=30)
            while time.perf_counter() < stop:
                path = "/runs/r-1" if i % 2 == 0 else f"/episodes/{rnd.choice(episodes)}"
                page = "run" if i % 2 == 0 else "episode"
                try:
                    status, dt, server_ms, _ = get(host, port, path, conn)
                    local.append((page, status, dt, server_ms))
                except Exception:  # a refused or dropped connection is an error
                    local.append((page, 0, float("nan"), float("nan")))
                    conn.close()
                    conn = http.client.HTTPConnection(host, port, timeout=30)
                i += 1
            conn.close()
            with lock:
                results.extend(local)

        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    finally:
        server.terminate()
        writer.terminate()
        server.wait()
        writer.wait()
    errors = sum(1 for r in results if r[1] != 200)
    print(f"{clients} clients, {wall:.1f} s, {len(results)} requests ({len(results) / wall:.0f}/s), {errors} errors")
    out = {"clients": clients, "seconds": wall, "requests": len(results), "errors": errors}
    for page in ("run", "episode"):
        lat = [r[2] for r in results if r[0] == page and r[1] == 200]
        srv = [r[3] for r in results if r[0] == page and r[1] == 200]
        print(f"{page:8} n={len(lat):6}  client p50 {pct(lat, 50):7.1f} ms  p99 {pct(lat, 99):7.1f} ms  "
              f"server median {statistics.median(srv) if srv else float('nan'):6.1f} ms  p99 {pct(srv, 99):6.1f} ms")
        out[page] = {"n": len(lat), "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99),
                     "server_median_ms": statistics.median(srv) if srv else None, "server_p99_ms": pct(srv, 99)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
