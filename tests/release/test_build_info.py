"""build.rs, compiled and run as cargo runs it: the commit and backends `--version` prints. A
checkout names its HEAD (`-dirty` when tracked files changed); a source tarball names the commit
in BOOTSECRETS_GIT_COMMIT, else `unknown`, even when unpacked inside another git repository."""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def build_script(tmp_path_factory):
    exe = tmp_path_factory.mktemp("buildrs") / "build-script"
    subprocess.run(["rustc", "--edition", "2024", "-O", str(ROOT / "build.rs"), "-o", str(exe)],
                   check=True, capture_output=True)
    return exe


def run(build_script, manifest_dir, features=("aws", "vault", "azure", "gcp"), commit=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CARGO_FEATURE_", "GIT_"))}
    env.pop("BOOTSECRETS_GIT_COMMIT", None)
    env.update({"CARGO_MANIFEST_DIR": str(manifest_dir), "TARGET": "x86_64-unknown-linux-gnu"})
    env.update({f"CARGO_FEATURE_{f.upper()}": "1" for f in features})
    if commit is not None:
        env["BOOTSECRETS_GIT_COMMIT"] = commit
    out = subprocess.run([str(build_script)], env=env, cwd=manifest_dir, capture_output=True, text=True,
                         check=True).stdout
    return {k: v for k, _, v in (line.removeprefix("cargo:rustc-env=").partition("=")
                                 for line in out.splitlines() if line.startswith("cargo:rustc-env="))}


def git(cwd, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=cwd,
                          check=True, capture_output=True, text=True).stdout.strip()


def test_a_checkout_names_its_head_and_says_dirty(build_script, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "Cargo.toml").write_text("[package]\n")
    git(repo, "add", "Cargo.toml")
    git(repo, "commit", "-q", "-m", "one")
    head = git(repo, "rev-parse", "HEAD")
    assert run(build_script, repo)["BOOTSECRETS_COMMIT"] == head
    (repo / "untracked").write_text("x")
    assert run(build_script, repo)["BOOTSECRETS_COMMIT"] == head, "untracked files do not count"
    (repo / "Cargo.toml").write_text("[package]\nname = 'x'\n")
    assert run(build_script, repo)["BOOTSECRETS_COMMIT"] == f"{head}-dirty"
    # The environment wins (the release script sets it to the commit it checked).
    assert run(build_script, repo, commit="abc123")["BOOTSECRETS_COMMIT"] == "abc123"


def test_a_source_tarball_names_the_commit_it_is_given_else_unknown(build_script, tmp_path):
    outer = tmp_path / "monorepo"
    src = outer / "vendor" / "bootsecrets"
    src.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", "--format=tar", "HEAD"], cwd=ROOT, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    assert not (src / ".git").exists()
    assert run(build_script, src)["BOOTSECRETS_COMMIT"] == "unknown"
    # Unpacked inside another repository: not that repository's commit.
    git(outer, "init", "-q")
    git(outer, "add", "-A")
    git(outer, "commit", "-q", "-m", "vendored")
    assert run(build_script, src)["BOOTSECRETS_COMMIT"] == "unknown"
    head = git(ROOT, "rev-parse", "HEAD")
    assert run(build_script, src, commit=head)["BOOTSECRETS_COMMIT"] == head


def test_backends_are_the_features_enabled(build_script, tmp_path):
    assert run(build_script, tmp_path)["BOOTSECRETS_BACKENDS"] == "aws vault azure gcp"
    assert run(build_script, tmp_path, features=("gcp", "aws"))["BOOTSECRETS_BACKENDS"] == "aws gcp"
    assert run(build_script, tmp_path, features=())["BOOTSECRETS_BACKENDS"] == "none"
    assert run(build_script, tmp_path)["BOOTSECRETS_TARGET"] == "x86_64-unknown-linux-gnu"
