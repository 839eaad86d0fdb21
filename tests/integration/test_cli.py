"""The command line as a user meets it: every subcommand's --help, the manual page, the shell
completions (each judged by its own shell), --version."""

import re
import shutil
import subprocess

import pytest

from conftest import BIN

SUBCOMMANDS = ["run", "check", "render", "doctor", "units", "man", "completions"]


def bs(*args, **kw):
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, **kw)


def test_the_subcommands_are_the_documented_ones():
    r = bs("--help")
    assert r.returncode == 0, r
    listed = re.findall(r"^  (\w+)\s", r.stdout.split("Commands:")[1].split("Options:")[0], re.M)
    assert sorted(listed) == sorted(SUBCOMMANDS + ["help"]), listed


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_every_subcommand_has_help(sub):
    r = bs(sub, "--help")
    assert r.returncode == 0 and r.stderr == "", r
    about = r.stdout.splitlines()[0]
    assert about and not about.startswith("Usage"), "each subcommand says what it does first"
    assert f"Usage: {BIN.name} {sub}" in r.stdout, r
    assert "--manifest" in r.stdout, "the global options are listed under every subcommand"


def test_the_manual_page_renders_and_covers_every_subcommand(tmp_path):
    r = bs("man")
    assert r.returncode == 0 and r.stdout.startswith(".ie"), r.stdout[:200]
    assert ".TH bootsecrets 1" in r.stdout
    for sub in SUBCOMMANDS:
        assert f"bootsecrets {sub}" in r.stdout.replace("\\-", "-"), sub
    # One page: no reference to per-subcommand pages that do not exist.
    assert not re.search(r"bootsecrets\\?-(run|check|render|doctor|units|man|completions)\(1\)",
                         r.stdout), "names a page that does not exist"
    for section in ['.SH "EXIT STATUS"', ".SH FILES", ".SH ENVIRONMENT", '.SH "SEE ALSO"']:
        assert section in r.stdout, section
    assert "/usr/share" not in bs("--help").stdout, "/usr is read-only on a node"
    if shutil.which("man") is None:
        pytest.skip("man is not installed: the roff was checked, its rendering was NOT")
    page = tmp_path / "bootsecrets.1"
    page.write_text(r.stdout)
    shown = subprocess.run(["man", "-l", str(page)], capture_output=True, text=True,
                           env={"MANWIDTH": "100", "PATH": "/usr/bin:/bin"})
    assert shown.returncode == 0 and "bootsecrets doctor" in shown.stdout, shown
    assert "EXIT STATUS" in shown.stdout and "BOOTSECRETS_MANIFEST" in shown.stdout, shown.stdout
    assert "warning" not in shown.stderr.lower(), shown.stderr


@pytest.mark.parametrize("shell,check", [
    ("bash", ["bash", "-n"]),
    ("zsh", ["zsh", "-n"]),
    ("fish", ["fish", "--no-execute"]),
])
def test_completions_parse_in_their_shell(shell, check, tmp_path):
    r = bs("completions", shell)
    assert r.returncode == 0 and r.stdout, r
    for sub in ("doctor", "render", "check"):
        assert sub in r.stdout, (shell, sub)
    if shutil.which(check[0]) is None:
        pytest.skip(f"{check[0]} is not installed: its script was NOT checked by {check[0]}")
    script = tmp_path / f"completion.{shell}"
    script.write_text(r.stdout)
    p = subprocess.run([*check, str(script)], capture_output=True, text=True)
    assert p.returncode == 0, p


def test_version_names_the_commit_and_the_backends():
    r = bs("--version")
    assert r.returncode == 0, r
    assert re.match(r"bootsecrets \d+\.\d+\.\d+", r.stdout), r.stdout
    assert "backends: aws vault azure gcp" in r.stdout, r.stdout
    assert "commit:" in r.stdout, r.stdout
