"""Peak memory of a run whose backend answers far more than settings.max_response_bytes.

Usage: python3 bench/oversize.py --binary PATH [--mib 300] [--limit 1048576] [--method approle]

A Vault double answers every login (AppRole, JWT, Kubernetes: POST auth/<mount>/login) with a
JSON body of --mib MiB, streamed; the run's manifest sets max_response_bytes = --limit. Prints the
binary's exit code, how long it took, how many bytes the double managed to send before the
client stopped reading, and the process's peak RSS (wait4's ru_maxrss). A client that bounds
every response stops after about --limit bytes, with a peak RSS of a few MiB.
"""

import argparse
import os
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path


def serve(mib: int):
    sent = {"bytes": 0}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            head = b'{"auth":{"client_token":"hvs.x"},"pad":"'
            tail = b'"}'
            chunk = b"a" * (1 << 20)
            size = len(head) + mib * len(chunk) + len(tail)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            try:
                self.wfile.write(head)
                for _ in range(mib):
                    self.wfile.write(chunk)
                    sent["bytes"] += len(chunk)
                self.wfile.write(tail)
            except (BrokenPipeError, ConnectionResetError):
                pass

    class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
        daemon_threads = True
        allow_reuse_address = True

    srv = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, sent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--mib", type=int, default=300)
    ap.add_argument("--limit", type=int, default=1 << 20)
    ap.add_argument("--method", choices=["approle", "jwt", "kubernetes"], default="approle")
    args = ap.parse_args()
    srv, sent = serve(args.mib)
    work = Path(tempfile.mkdtemp(prefix="bs-oversize-", dir="/dev/shm"))
    cred = work / "cred"
    cred.write_text("credential\n")
    cred.chmod(0o600)
    auth = {
        "approle": f'method = "approle"\nrole_id_file = "{cred}"\nsecret_id_file = "{cred}"',
        "jwt": f'method = "jwt"\njwt_file = "{cred}"',
        "kubernetes": f'method = "kubernetes"\nrole = "node"\njwt_file = "{cred}"',
    }[args.method]
    manifest = work / "manifest.toml"
    manifest.write_text(f"""
[settings]
output_root = "{work}/out"
deadline_seconds = 20
max_response_bytes = {args.limit}

[backend.v]
type = "vault"
address = "http://127.0.0.1:{srv.server_address[1]}"

[backend.v.auth]
{auth}

[[secret]]
path = "a"
ref = "secret/a"
""")
    start = time.monotonic()
    proc = subprocess.Popen([args.binary, "run", "--manifest", str(manifest)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    took = time.monotonic() - start
    err = proc.stderr.read().decode(errors="replace").strip().splitlines()
    srv.shutdown()
    print(f"binary        {args.binary}")
    print(f"login         {args.method}, answer {args.mib} MiB, max_response_bytes {args.limit}")
    print(f"exit          {os.waitstatus_to_exitcode(status)} after {took:.2f} s")
    print(f"sent          {sent['bytes'] / (1 << 20):.0f} MiB before the client stopped reading")
    print(f"peak RSS      {usage.ru_maxrss / 1024:.1f} MiB")
    print(f"last message  {err[-1] if err else ''}")
    for p in sorted(work.rglob("*"), reverse=True):
        p.unlink() if not p.is_dir() or p.is_symlink() else p.rmdir()
    work.rmdir()


if __name__ == "__main__":
    sys.exit(main())
