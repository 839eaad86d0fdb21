"""Crash consistency: SIGKILL bootsecrets at random points of a refresh, many times, and check
after each kill that what a consumer sees is exactly the old set or exactly the new one."""

import os
import random
import signal
import subprocess
import time

from conftest import BIN, aws_manifest, node_argv, published

RUNS = int(os.environ.get("BOOTSECRETS_CRASH_RUNS", "200"))


def make_sets(moto, name):
    """Two sets that differ in values, in names (one name only in each) and in a subdirectory."""
    sm = moto.client("secretsmanager")
    sets = {}
    for tag in ("A", "B"):
        files = {}
        for i in range(12):
            files[f"common-{i:02d}"] = f"{tag}-common-{i}"
        files[f"only-{tag}"] = f"{tag}-only"
        files[f"dir/{tag}/nested"] = f"{tag}-nested"
        files["dir/shared"] = f"{tag}-shared"
        for path, value in files.items():
            sm.create_secret(Name=f"{name}/{tag}/{path}", SecretString=value)
        sets[tag] = files
    return sets


def view(outdir):
    return {p: f.read_text() for p, f in published(outdir).items()}


def test_sigkill_at_random_points_leaves_exactly_the_old_or_the_new_set(
        moto, imds, outdir, name, tmp_path):
    sets = make_sets(moto, name)
    texts = {tag: aws_manifest(outdir, imds, moto, [
        {"path": p, "ref": f"{name}/{tag}/{p}"} for p in files]) for tag, files in sets.items()}
    # One manifest (an output root belongs to one), edited between runs as an operator would.
    manifest = tmp_path / "manifest.toml"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}

    def start(tag):
        staged = tmp_path / "manifest.toml.new"
        staged.write_text(texts[tag])
        staged.replace(manifest)
        return subprocess.Popen(node_argv([str(BIN), "run", "--manifest", str(manifest)]),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)

    # Publish A, and measure how long a whole run takes.
    t0 = time.monotonic()
    assert start("A").wait(timeout=60) == 0
    full = time.monotonic() - t0
    assert view(outdir) == sets["A"]

    rng = random.Random(int(os.environ.get("BOOTSECRETS_CRASH_SEED", "0")) or None)
    current = "A"
    outcomes = {"old": 0, "new": 0}
    for i in range(RUNS):
        target = "B" if current == "A" else "A"
        p = start(target)
        # Most kills land in the second half of the run, where the writing happens.
        time.sleep(rng.uniform(0, 1) ** 0.5 * full * 1.2)
        p.send_signal(signal.SIGKILL)
        p.wait()
        seen = view(outdir)
        if seen == sets[current]:
            outcomes["old"] += 1
        elif seen == sets[target]:
            outcomes["new"] += 1
            current = target
        else:
            raise AssertionError(
                f"run {i}: a mix after SIGKILL (old {current}, new {target}):\n"
                f"{sorted(seen.items())}")
    print(f"{RUNS} kills: {outcomes}")
    # Kills must have landed on both sides of the flip, or the test proved little.
    assert outcomes["old"] > 0 and outcomes["new"] > 0, outcomes

    # A clean run afterwards removes every leftover of the killed runs.
    target = "B" if current == "A" else "A"
    assert start(target).wait(timeout=60) == 0
    assert view(outdir) == sets[target]
    versions = [n for n in os.listdir(outdir) if n.startswith("..v-")]
    assert len(versions) == 1, os.listdir(outdir)
    assert not [n for n in os.listdir(outdir) if n.startswith("..tmp-")]
