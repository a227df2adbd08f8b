"""Scale-out benchmark: cookbook queries local against Ballista (one and
two executors, same machine), and rollouts through one against three tool
gateways on a sandbox with injected latency. Medians and ratios.

usage: bench_scale.py FATHOM DATA REPEATS [all|sql|gateways]
"""
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from bench_sql import COOKBOOK  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(cmd):
    return timed_cpu(cmd)[0]


def timed_cpu(cmd):
    """Wall seconds of a command, and the CPU seconds (user + system) it used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd[:6])}… failed: {out.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return dt, cpu


def cluster(fathom, executors):
    sched = f"127.0.0.1:{free_port()}"
    procs = [subprocess.Popen([fathom, "cluster", "scheduler", "--addr", sched],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    for _ in range(executors):
        procs.append(subprocess.Popen([fathom, "cluster", "executor", "--scheduler", f"df://{sched}",
                                       "--port", str(free_port()), "--grpc-port", str(free_port())],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return f"df://{sched}", procs


def stop(procs):
    for p in procs:
        p.kill()
        p.wait()


def sql_bench(fathom, data, repeats):
    print(f"## cookbook queries, median of {repeats} (wall time of `fathom sql`, process start included)\n")
    modes = [("local", None, 0), ("ballista-1", None, 1), ("ballista-2", None, 2)]
    times = {m: [] for m, _, _ in modes}
    for name, _, n in modes:
        url, procs = (None, []) if n == 0 else cluster(fathom, n)
        try:
            extra = ["--snapshots-only"] if url is None else ["--cluster", url]
            if url:
                for _ in range(100):  # wait for the executors to register
                    if subprocess.run([fathom, "--data", data, "sql", *extra, "SELECT 1"],
                                      capture_output=True).returncode == 0:
                        break
                    time.sleep(0.2)
            for label, q in COOKBOOK:
                runs = [timed([fathom, "--data", data, "sql", "--format", "csv", *extra, q]) for _ in range(repeats)]
                times[name].append((label, statistics.median(runs)))
        finally:
            stop(procs)
    print("| query | local | Ballista, 1 executor | Ballista, 2 executors |")
    print("|---|---:|---:|---:|")
    for i, (label, t) in enumerate(times["local"]):
        b1, b2 = times["ballista-1"][i][1], times["ballista-2"][i][1]
        print(f"| {label} | {t * 1000:.0f} ms | {b1 * 1000:.0f} ms ({b1 / t:.2f}x) | {b2 * 1000:.0f} ms ({b2 / t:.2f}x) |")
    tot = {k: sum(t for _, t in v) for k, v in times.items()}
    print(f"\ntotal: local {tot['local']:.2f} s, Ballista 1 executor {tot['ballista-1']:.2f} s "
          f"({tot['ballista-1'] / tot['local']:.2f}x), 2 executors {tot['ballista-2']:.2f} s "
          f"({tot['ballista-2'] / tot['local']:.2f}x)\n")


def gateway_bench(fathom, repeats):
    print("## rollouts through tool gateways (scripted researcher, sandbox latency 100 ms per response)\n")
    work = tempfile.mkdtemp()
    port = free_port()
    sandbox = subprocess.Popen([fathom, "sandbox", "serve", "--addr", f"127.0.0.1:{port}",
                                "--faults", "latency=1.0:100ms"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    questions = os.path.join(work, "q.parquet")
    subprocess.run([fathom, "sandbox", "questions", "--count", "64", "--out", questions], check=True,
                   capture_output=True)
    gateways = []
    for _ in range(3):
        gport = free_port()
        gateways.append((subprocess.Popen([fathom, "gateway", "serve", "--addr", f"127.0.0.1:{gport}",
                                           "--sandbox", f"127.0.0.1:{port}"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
                         f"http://127.0.0.1:{gport}"))
    time.sleep(1.0)
    results = {}
    try:
        for name, urls in [("in-process", []), ("1 gateway", [gateways[0][1]]),
                           ("3 gateways", [g[1] for g in gateways])]:
            runs, cpus = [], []
            for r in range(repeats):
                data = os.path.join(work, f"d-{name.replace(' ', '-')}-{r}")
                cmd = [fathom, "--data", data, "--snapshot-every", "off", "eval", "--questions", questions,
                       "--sandbox", f"127.0.0.1:{port}", "--concurrency", "32"]
                if urls:
                    cmd += ["--gateways", ",".join(urls)]
                wall, cpu = timed_cpu(cmd)
                runs.append(wall)
                cpus.append(cpu)
            results[name] = (statistics.median(runs), statistics.median(cpus))
    finally:
        stop([sandbox] + [g[0] for g in gateways])
    base, base_cpu = results["in-process"]
    print("| gateways | 64 episodes | episodes/s | vs in-process | trainer CPU | vs in-process |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (t, cpu) in results.items():
        print(f"| {name} | {t:.2f} s | {64 / t:.1f} | {base / t:.2f}x | {cpu:.2f} s | {cpu / base_cpu:.2f}x |")
    print()


def main():
    fathom, data, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
    part = sys.argv[4] if len(sys.argv) > 4 else "all"
    if part not in ("all", "sql", "gateways"):
        sys.exit(f"unknown part '{part}': use all, sql or gateways")
    if part in ("all", "sql"):
        sql_bench(fathom, data, repeats)
    if part in ("all", "gateways"):
        gateway_bench(fathom, repeats)


if __name__ == "__main__":
    main()
