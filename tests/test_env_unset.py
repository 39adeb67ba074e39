"""`devmeter env --unset` undoes `eval "$(devmeter env)"` in a real shell.

A shell routed with `devmeter env` keeps pointing at the proxy after it stops (its HTTPS
then fails) and keeps SSL_CERT_FILE and friends naming devmeter's bundle (which
`devmeter uninstall` and removing the data folder leave dangling): the user needs a way
back that does not mean typing eleven variable names.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from devmeter import shellenv
from devmeter.paths import paths

DEVMETER = f"{sys.executable} -m devmeter"


def test_bash_eval_of_env_then_env_unset_leaves_none_of_its_variables(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "DEVMETER_HOME": str(tmp_path)}
    env["SSL_CERT_FILE"] = "/etc/mine.pem"  # the user's own, replaced by `devmeter env`
    names = list(shellenv.proxy_environment(paths(env), "127.0.0.1", 1))
    script = (
        f'eval "$({DEVMETER} env --shell bash 2>/dev/null)"; echo "routed=$HTTPS_PROXY"; '
        f'eval "$({DEVMETER} env --unset --shell bash)"; '
        + "".join(f'echo "{n}=${{{n}-UNSET}}"; ' for n in names)
    )
    out = subprocess.run(
        ["bash", "--norc", "-c", script], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "routed=http://127.0.0.1:" in out  # the first eval did route the shell
    assert [line for line in out.splitlines() if not line.startswith("routed=")] == [
        f"{n}=UNSET" for n in names
    ]


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")
def test_fish_source_of_env_unset_erases_them(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "DEVMETER_HOME": str(tmp_path)}
    script = (
        f"{DEVMETER} env --shell fish 2>/dev/null | source; "
        f"{DEVMETER} env --unset --shell fish | source; set -q HTTPS_PROXY; or echo gone"
    )
    out = subprocess.run(["fish", "-c", script], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "gone", out.stderr


def test_unset_is_written_in_each_shells_syntax() -> None:
    names = ["HTTPS_PROXY", "SSL_CERT_FILE"]
    assert shellenv.render_unset(names, "bash") == "unset HTTPS_PROXY SSL_CERT_FILE\n"
    assert shellenv.render_unset(names, "zsh") == "unset HTTPS_PROXY SSL_CERT_FILE\n"
    assert shellenv.render_unset(names, "fish") == "set -e HTTPS_PROXY;\nset -e SSL_CERT_FILE;\n"
    assert shellenv.render_unset(names, "powershell") == (
        "Remove-Item Env:HTTPS_PROXY -ErrorAction SilentlyContinue\n"
        "Remove-Item Env:SSL_CERT_FILE -ErrorAction SilentlyContinue\n"
    )
