"""release/build.sh refuses what it cannot release, before building anything: an unknown target,
a target the toolchain has no standard library for (arm64 on this machine), uncommitted changes
(and a reproducibility check of them). Run in a clone, so the checkout is never touched."""

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    d = tmp_path_factory.mktemp("release") / "src"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(d)], check=True)
    return d


def release(clone, *args):
    return subprocess.run([str(clone / "release" / "build.sh"), *args], cwd=clone, capture_output=True,
                          text=True, timeout=120)


def test_help_says_what_it_builds(clone):
    r = release(clone, "--help")
    assert r.returncode == 0 and "--verify-reproducible" in r.stdout and "SHA512SUMS" in r.stdout, r
    r = release(clone, "--bogus")
    assert r.returncode == 2 and "unknown argument --bogus" in r.stderr, r


def test_an_unknown_target_is_refused(clone):
    r = release(clone, "--target", "riscv64gc-unknown-linux-gnu")
    assert r.returncode == 1 and "only x86_64-unknown-linux-gnu and aarch64-unknown-linux-gnu" in r.stderr, r


def test_arm64_without_its_standard_library_says_how_to_get_it(clone):
    libdir = subprocess.run(["rustc", "--print", "target-libdir", "--target", "aarch64-unknown-linux-gnu"],
                            capture_output=True, text=True).stdout.strip()
    if any(Path(libdir).glob("libstd-*.rlib")):
        pytest.skip("this toolchain has aarch64-unknown-linux-gnu: the refusal cannot be shown here")
    r = release(clone, "--target", "aarch64-unknown-linux-gnu")
    assert r.returncode == 1, r
    assert "rustup target add aarch64-unknown-linux-gnu" in r.stderr, r
    assert "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER" in r.stderr, r
    assert not (clone / "dist").exists()


def test_uncommitted_changes_are_not_released(clone):
    readme = clone / "README.md"
    readme.write_text(readme.read_text() + "\nchanged\n")
    try:
        r = release(clone)
        assert r.returncode == 1 and "uncommitted changes" in r.stderr, r
        r = release(clone, "--allow-dirty", "--verify-reproducible")
        assert r.returncode == 1 and "commit the changes first" in r.stderr, r
        assert not (clone / "dist").exists()
    finally:
        subprocess.run(["git", "checkout", "-q", "README.md"], cwd=clone, check=True)
