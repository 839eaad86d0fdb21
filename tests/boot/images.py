"""The boot test's two images, each built once per checkout of build-image.sh and suite (a fresh
clone builds both): Debian bookworm (systemd 252, the oldest a fleet still runs) and Debian sid
(systemd 262 with systemd-imds, newer than current node images).

`python3 tests/boot/images.py [SUITE...]` builds what is missing or stale and prints what each
took; tests/run does so before the boot tests, which then find them built."""

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
IMAGES = {"bookworm": Path(os.environ.get("BOOTSECRETS_BOOT_IMAGE", ROOT / "target" / "boot-image")),
          "sid": Path(os.environ.get("BOOTSECRETS_BOOT_IMAGE_SID", ROOT / "target" / "boot-image-sid"))}
SYSTEMD = {"bookworm": 252, "sid": 262}


def build_image(suite: str) -> Path:
    image = IMAGES[suite]
    want = hashlib.sha256((HERE / "build-image.sh").read_bytes() + suite.encode()).hexdigest()
    stamp = image / "build-image.sha256"
    if stamp.exists() and stamp.read_text() == want and (image / "base.img").exists():
        return image
    t = time.monotonic()
    subprocess.run([str(HERE / "build-image.sh"), str(image)], check=True, env=dict(os.environ, SUITE=suite))
    stamp.write_text(want)
    print(f"[images] {suite} (systemd {SYSTEMD[suite]}) built in {time.monotonic() - t:.0f} s: {image}",
          file=sys.stderr)
    return image


if __name__ == "__main__":
    for s in sys.argv[1:] or list(IMAGES):
        build_image(s)
