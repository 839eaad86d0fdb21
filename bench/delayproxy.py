"""A TCP proxy that adds a round-trip time: every chunk read from either side is held for half the
round trip before it is written to the other side, in order (a network path with that latency and
ample bandwidth).

    python3 bench/delayproxy.py --target-port PORT --rtt-ms MS [--port PORT]

Prints `ready PORT` on stdout once it listens on 127.0.0.1. What it does not model: the TCP
handshake (the proxy accepts at once and connects upstream at once, so a connection costs no round
trip), loss, and bandwidth. Both clients of a comparison go through the same proxy, so what it leaves
out favours neither.
"""

import argparse
import asyncio
import socket
import sys


async def pump(reader, writer, half, loop):
    """Copies reader to writer, each chunk written `half` seconds after it was read."""
    queue = asyncio.Queue()

    async def deliver():
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if data is None:
                try:
                    writer.write_eof()
                except OSError:
                    pass
                return
            writer.write(data)
            try:
                await writer.drain()
            except OSError:
                return

    task = asyncio.ensure_future(deliver())
    try:
        while True:
            data = await reader.read(65536)
            queue.put_nowait((loop.time() + half, data or None))
            if not data:
                break
    except OSError:
        queue.put_nowait((loop.time() + half, None))
    await task


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target-port", type=int, required=True)
    ap.add_argument("--rtt-ms", type=float, required=True)
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    half = args.rtt_ms / 2000.0
    loop = asyncio.get_running_loop()

    async def handle(creader, cwriter):
        try:
            ureader, uwriter = await asyncio.open_connection("127.0.0.1", args.target_port)
        except OSError:
            cwriter.close()
            return
        for w in (cwriter, uwriter):
            w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(pump(creader, uwriter, half, loop), pump(ureader, cwriter, half, loop))
        for w in (cwriter, uwriter):
            w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", args.port, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    print(f"ready {port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
