"""The fleet simulation's driver: thousands of nodes booting against one account's Secrets Manager
quotas. See bench/fleet/main.rs for the double and the nodes, docs/performance.md for the results.

    bench/fleet.sh [--nodes 1000] [--secrets 20] [--quota-scale 0.1] [--scenario NAME ...]

Each scenario starts a fresh double (its token buckets full), boots every node at the same instant
plus the scenario's boot spread, and measures, per node, the time from boot to its secrets written
(or its failure); and, at the double, every request and every throttled one. The quotas are AWS's
(GetSecretValue 10,000 per second, BatchGetSecretValue 100 per second, per account and region; a
bucket of one second's worth is assumed: AWS does not publish its burst) times --quota-scale:
with the default 0.1, 1000 nodes against a tenth of the quotas stand for 10,000 nodes against the
whole of them (the same seconds of work per quota, the same backoff and jitter times), at a rate
this two-core machine can serve and send with room to spare.

Minimum requests: one GetSecretValue per secret per node (BatchGetSecretValue: one per 20). Ideal
completion: that minimum divided by the quota (total work over quota: no fleet can do better).
"""

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> (description, extra [settings] lines, mode, boot spread in s)
SCENARIOS = {
    "default": ("default settings", "", "get", 0),
    "concurrency-1": ("concurrency = 1", "concurrency = 1", "get", 0),
    "concurrency-4": ("concurrency = 4", "concurrency = 4", "get", 0),
    "concurrency-16": ("concurrency = 16", "concurrency = 16", "get", 0),
    "concurrency-32": ("concurrency = 32", "concurrency = 32", "get", 0),
    "jitter-0": ("startup_jitter_ms = 0", "startup_jitter_ms = 0", "get", 0),
    "jitter-5s": ("startup_jitter_ms = 5000", "startup_jitter_ms = 5000", "get", 0),
    "jitter-sized": ("startup_jitter_ms sized to the fleet (nodes x secrets / quota)", "JITTER_SIZED",
                     "get", 0),
    "batch": ("BatchGetSecretValue, 20 a call", "", "batch", 0),
    "spread-30s": ("default settings, boots spread over 30 s", "", "get", 30),
}


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def run_scenario(args, exe, name, log):
    desc, settings, mode, spread = SCENARIOS[name]
    get_rate, batch_rate = 10000 * args.quota_scale, 100 * args.quota_scale
    minimum = args.nodes * (args.secrets if mode == "get" else math.ceil(args.secrets / 20))
    rate = get_rate if mode == "get" else batch_rate
    ideal = minimum / rate
    if settings == "JITTER_SIZED":
        settings = f"startup_jitter_ms = {int(ideal * 1000)}"
    server = subprocess.Popen(
        [str(exe), "serve", "--get-rate", str(get_rate), "--get-burst", str(get_rate * args.burst_seconds),
         "--batch-rate", str(batch_rate), "--batch-burst", str(batch_rate * args.burst_seconds)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    ready = server.stdout.readline().split()
    assert ready and ready[0] == "ready", ready
    sm_ports, imds_port = ready[1], ready[2]
    out = Path(f"/dev/shm/bootsecrets-fleet-{os.getpid()}")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    epoch = int(time.time() * 1000) + 1500
    per = math.ceil(args.nodes / args.procs)
    procs = []
    for p in range(args.procs):
        first, count = p * per, min(per, args.nodes - p * per)
        procs.append(subprocess.Popen(
            [str(exe), "nodes", "--first", str(first), "--count", str(count), "--secrets", str(args.secrets),
             "--sm-ports", sm_ports, "--imds-port", imds_port, "--boot-spread-ms", str(spread * 1000),
             "--epoch-ms", str(epoch), "--settings", settings, "--mode", mode, "--dir", str(out),
             "--seed", str(args.seed)],
            stdout=subprocess.PIPE, text=True))
    records = []
    for p in procs:
        text, _ = p.communicate()
        records += [json.loads(line) for line in text.splitlines() if line.strip()]
    server.stdin.close()
    report = json.loads(server.stdout.read().strip().splitlines()[-1])
    server.wait()
    shutil.rmtree(out, ignore_errors=True)
    took = [(r["done_unix_ms"] - r["boot_unix_ms"]) / 1000 for r in records]
    c = report["counters"]
    total = c["get_ok"] + c["get_throttled"] + c["batch_ok"] + c["batch_throttled"]
    throttled = c["get_throttled"] + c["batch_throttled"]
    failures = [r for r in records if not r["ok"]]
    per_node = report["per_node"]
    res = {
        "scenario": name, "description": desc, "settings": settings, "mode": mode,
        "boot_spread_s": spread, "nodes": args.nodes, "secrets": args.secrets,
        "get_quota": get_rate, "batch_quota": batch_rate, "burst_seconds": args.burst_seconds,
        "ok": len(records) - len(failures), "failed": len(failures),
        "errors": sorted({r["error"] for r in failures})[:5],
        "requests": total, "minimum": minimum, "requests_ratio": total / minimum,
        "throttled": throttled, "retries": total - (c["get_ok"] + c["batch_ok"]),
        "imds_requests": c["imds"],
        "max_throttled_per_node": max((n[1] for n in per_node), default=0),
        "ideal_s": ideal,
        "p50_s": pct(took, 50), "p90_s": pct(took, 90), "p99_s": pct(took, 99), "max_s": max(took),
        "p99_over_ideal": pct(took, 99) / ideal,
        "makespan_s": (max(r["done_unix_ms"] for r in records) - epoch) / 1000,
        "completion_s": sorted(took),
        "timeline": {"start_unix_ms": report["timeline_start_unix_ms"], "epoch_unix_ms": epoch,
                     "bucket_ms": report["bucket_ms"], "counts": report["timeline"]},
        "load_before": float(Path("/proc/loadavg").read_text().split()[0]),
    }
    log(f"{name}: {res['ok']}/{args.nodes} ok, requests {total} = {res['requests_ratio']:.3f} x minimum "
        f"({throttled} throttled, at most {res['max_throttled_per_node']} on one node), p50 "
        f"{res['p50_s']:.2f} s, p99 {res['p99_s']:.2f} s = {res['p99_over_ideal']:.2f} x ideal "
        f"{ideal:.1f} s, max {res['max_s']:.2f} s")
    return res


def table(results):
    rows = ["| scenario | nodes ok | requests (x minimum) | throttled (most on one node) | p50 | p99 "
            "| p99 / ideal | max | targets |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        met = r["failed"] == 0 and r["requests_ratio"] <= 1.1 and r["p99_over_ideal"] <= 1.5
        rows.append(f"| {r['description']} | {r['ok']}/{r['nodes']} | {r['requests']} "
                    f"(**{r['requests_ratio']:.2f}**) | {r['throttled']} ({r['max_throttled_per_node']}) "
                    f"| {r['p50_s']:.1f} s | {r['p99_s']:.1f} s | **{r['p99_over_ideal']:.2f}** "
                    f"| {r['max_s']:.1f} s | {'met' if met else 'not met'} |")
    return "\n".join(rows)


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(2, 1, figsize=(9, 8.5), gridspec_kw={"height_ratios": [3, 2]})
    ideal = None
    for r in results:
        xs = r["completion_s"]
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        a.step(xs, ys, where="post", label=f"{r['description']} (p99 {r['p99_s']:.1f} s, "
               f"{r['requests_ratio']:.2f}x requests)")
        if r["mode"] == "get":
            ideal = r["ideal_s"]
    if ideal:
        a.axvline(ideal, color="grey", ls=":", lw=1)
        a.axvline(1.5 * ideal, color="grey", ls="--", lw=1)
        a.text(ideal, 0.02, " ideal", color="grey")
        a.text(1.5 * ideal, 0.02, " 1.5 x ideal", color="grey")
    r0 = results[0]
    a.set_title(f"{r0['nodes']} nodes x {r0['secrets']} secrets booting at once; GetSecretValue quota "
                f"{r0['get_quota']:.0f}/s", fontsize=10)
    a.set_xlabel("seconds from boot to secrets written")
    a.set_ylabel("fraction of nodes")
    a.set_xscale("symlog", linthresh=1)
    a.set_xlim(left=0)
    a.grid(alpha=0.3)
    a.legend(fontsize=7, loc="lower right")
    tl = r0["timeline"]
    off = (tl["start_unix_ms"] - tl["epoch_unix_ms"]) / 1000
    w = tl["bucket_ms"] / 1000
    xs = [off + i * w for i in range(len(tl["counts"]))]
    b.bar(xs, [c[0] / w for c in tl["counts"]], width=w, label="GetSecretValue served", color="tab:blue")
    b.bar(xs, [c[1] / w for c in tl["counts"]], width=w, bottom=[c[0] / w for c in tl["counts"]],
          label="throttled", color="tab:red")
    b.axhline(r0["get_quota"], color="grey", ls="--", lw=1)
    b.set_title(f"{r0['description']}: requests per second at the double", fontsize=10)
    b.set_xlabel("seconds since the fleet booted")
    b.set_ylabel("requests / s")
    b.legend(fontsize=8)
    b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exe", required=True)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--secrets", type=int, default=20)
    ap.add_argument("--quota-scale", type=float, default=0.1)
    ap.add_argument("--burst-seconds", type=float, default=1.0)
    ap.add_argument("--procs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scenario", action="append", choices=list(SCENARIOS))
    ap.add_argument("--idle-load", type=float, default=0.6)
    ap.add_argument("--out", default=str(ROOT / "target/bench/fleet.json"))
    ap.add_argument("--plot", default=str(ROOT / "target/bench/fleet.png"))
    args = ap.parse_args()
    names = args.scenario or list(SCENARIOS)

    def log(msg):
        print(msg, flush=True)

    results = []
    for name in names:
        waited = 0
        while (la := float(Path("/proc/loadavg").read_text().split()[0])) >= args.idle_load:
            if waited % 120 == 0:
                log(f"  waiting for an idle machine: load {la:.2f} >= {args.idle_load}")
            time.sleep(15)
            waited += 15
        results.append(run_scenario(args, Path(args.exe), name, log))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "args": vars(args),
            "machine": f"{os.cpu_count()} CPUs"}
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print()
    print(table(results))
    if args.plot:
        plot(results, args.plot)
        print(f"\nplot: {args.plot}")
    print(f"raw: {out}")


if __name__ == "__main__":
    main()
