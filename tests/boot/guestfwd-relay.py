#!/usr/bin/env python3
"""guestfwd-relay.py PORT -- spawned by qemu's slirp for EACH guest TCP connection
(guestfwd=tcp:GUESTIP:GPORT-cmd:python3 guestfwd-relay.py PORT). stdin/stdout are
the guest connection; relays it to 127.0.0.1:PORT only. Exits when either side is
done or after an idle limit, so no relay outlives its connection for long."""
import os, socket, sys, threading

port = int(sys.argv[1])
idle = float(sys.argv[2]) if len(sys.argv) > 2 else 120.0
try:
    up = socket.create_connection(("127.0.0.1", port), timeout=10)
except OSError as e:
    sys.stderr.write("guestfwd-relay: cannot reach 127.0.0.1:%d: %s\n" % (port, e))
    sys.exit(1)
up.settimeout(idle)

def guest_to_host():
    try:
        while True:
            b = os.read(0, 65536)
            if not b:
                break
            up.sendall(b)
        up.shutdown(socket.SHUT_WR)
    except OSError:
        pass

threading.Thread(target=guest_to_host, daemon=True).start()
try:
    while True:
        b = up.recv(65536)
        if not b:
            break
        view = memoryview(b)
        while view:
            n = os.write(1, view)
            view = view[n:]
except OSError:
    pass
finally:
    up.close()
