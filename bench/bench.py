"""bootsecrets benchmark: wall time and peak memory of whole `bootsecrets run` processes against a
local moto (signatures on) and the IMDSv2 double, for a few manifest sizes.

Usage: bench/run.sh [--runs N]   (prints a table; figures depend on the machine: quote them with it)
Wall time includes GNU time's own fork and exec (about a millisecond).
Each run is a fresh process into a fresh tmpfs directory, as at boot: IMDSv2 token, credentials,
region, then N GetSecretValue calls and the write. The servers are Python and share the machine's
cores with the client, so server time dominates; the figure is an upper bound for the client.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from support.imds import ImdsDouble  # noqa: E402
from support.moto import Moto  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    binary = Path(args.binary).resolve()
    work = Path(tempfile.mkdtemp(prefix="bootsecrets-bench-"))
    moto = Moto(log_path=work / "moto.log").start()
    imds = ImdsDouble(moto).start()
    try:
        sm = moto.client("secretsmanager")
        print(f"binary {binary} ({binary.stat().st_size / 1e6:.1f} MB)")
        print(f"{'secrets':>7} {'runs':>5} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'peak RSS MB':>12}")
        for n in (1, 5, 20):
            prefix = f"bench-{uuid.uuid4().hex[:6]}"
            for i in range(n):
                sm.create_secret(Name=f"{prefix}/{i}", SecretString=json.dumps({"v": "x" * 256, "i": i}))
            manifest = work / f"m{n}.toml"
            out = Path(f"/dev/shm/bootsecrets-bench-{prefix}")
            body = (f'[settings]\noutput_root = "{out}"\nconcurrency = 4\n'
                    f'[backend.aws]\ntype = "aws"\nregion = "us-east-1"\nendpoint = "{moto.url}"\n'
                    f'imds_endpoint = "{imds.url}"\n')
            for i in range(n):
                body += f'[[secret]]\npath = "s/{i}"\nref = "{prefix}/{i}"\njson_key = "v"\n'
            manifest.write_text(body)
            times, rss = [], []
            for _ in range(args.runs):
                shutil.rmtree(out, ignore_errors=True)
                # GNU time reports the peak RSS of bootsecrets itself: ru_maxrss seen from this
                # Python process would include the forked Python image (about 47 MB) before exec.
                t = time.perf_counter()
                r = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(work / "rss"),
                                    str(binary), "run", "-q", "--manifest", str(manifest)],
                                   env={"PATH": "/usr/bin:/bin"}, capture_output=True)
                times.append((time.perf_counter() - t) * 1000)
                if r.returncode != 0:
                    raise SystemExit(f"run failed: {r.stderr.decode()}")
                rss.append(int((work / "rss").read_text().split()[-1]) / 1024)
            shutil.rmtree(out, ignore_errors=True)
            rss = max(rss)
            times.sort()
            p95 = times[min(len(times) - 1, int(len(times) * 0.95))]
            print(f"{n:>7} {args.runs:>5} {statistics.median(times):>8.1f} {p95:>8.1f} {times[-1]:>8.1f} {rss:>12.1f}")
        print("(peak RSS: the largest ru_maxrss of one bootsecrets process at that size)")
    finally:
        imds.stop()
        moto.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
