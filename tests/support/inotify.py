"""A minimal inotify watcher (Linux, through ctypes): lets a test act on the instant a name is
renamed into a directory, e.g. freeze bootsecrets right after it flips `..data`."""

import ctypes
import os
import select
import struct

IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100

_libc = ctypes.CDLL(None, use_errno=True)
_EVENT = struct.Struct("iIII")


class Watch:
    def __init__(self, directory, mask=IN_MOVED_TO):
        self.fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if _libc.inotify_add_watch(self.fd, os.fsencode(directory), mask) < 0:
            err = ctypes.get_errno()
            os.close(self.fd)
            raise OSError(err, f"inotify_add_watch {directory}")

    def wait_for(self, name, timeout):
        """Blocks until an event for `name` arrives; returns False after `timeout` seconds."""
        want = os.fsencode(name)
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        while poller.poll(timeout * 1000):
            data = os.read(self.fd, 65536)
            i = 0
            while i < len(data):
                _, _, _, length = _EVENT.unpack_from(data, i)
                i += _EVENT.size
                if data[i:i + length].rstrip(b"\0") == want:
                    return True
                i += length
        return False

    def close(self):
        os.close(self.fd)
