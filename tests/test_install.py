"""The README's install, as a newcomer runs it: a clean clone, a fresh HOME, one command.

These tests clone the repository's committed HEAD (not uncommitted edits), install
devmeter from it as a uv tool, and check the result from outside the checkout. They
need PyPI (uv's index; its package cache is shared with the test run, so it is quick)
and nothing else: no Python downloads, no installer scripts from elsewhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from tests.proxy_harness import REPO_ROOT

pytestmark = pytest.mark.install

UV = shutil.which("uv")
needs_uv_and_git = pytest.mark.skipif(
    UV is None or shutil.which("git") is None, reason="uv and git are needed to install"
)


def test_the_shipped_overrides_are_the_projects_own() -> None:
    """scripts/uv-overrides.txt is what `uv tool install` gets in place of pyproject's
    [tool.uv] override-dependencies, which it does not read: the two must agree."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    wanted = project["tool"]["uv"]["override-dependencies"]
    lines = (REPO_ROOT / "scripts/uv-overrides.txt").read_text().splitlines()
    shipped = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert sorted(shipped) == sorted(wanted)


def system_python(version: str) -> str | None:
    """A python{version} of the machine's, not the test run's own virtualenv."""
    venv = str(Path(sys.prefix) / "bin")
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != venv)
    return shutil.which(f"python{version}", path=path)


def readme_install_command() -> str:
    """The quick start's first command: the one that sets up and runs devmeter."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    quick = readme.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in quick.strip().splitlines()]
    assert len(commands) == 2 and commands[1] == "bash scripts/test.sh", commands
    return commands[0]


def fresh_machine(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """A clean clone and a fresh HOME; PATH has uv and the system's Pythons, no devmeter."""
    clone = tmp_path / "devmeter"
    subprocess.run(
        ["git", "clone", "--quiet", str(REPO_ROOT), str(clone)], check=True, capture_output=True
    )
    home = tmp_path / "home"
    home.mkdir()
    cache = subprocess.run(
        [str(UV), "cache", "dir"], capture_output=True, text=True, check=True
    ).stdout.strip()
    # The test runner's own PATH, less its virtualenv and the tester's home folder.
    entries = os.environ["PATH"].split(os.pathsep)
    venv = str(Path(sys.prefix) / "bin")
    system_path = [p for p in entries if not p.startswith(str(Path.home())) and p != venv]
    pyenv = [p for p in entries if "pyenv" in p]
    path = os.pathsep.join(dict.fromkeys([str(Path(str(UV)).parent), *pyenv, *system_path]))
    env = {
        "HOME": str(home),
        "PATH": path,
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "SHELL": "/bin/bash",
        "UV_CACHE_DIR": cache,
        "UV_PYTHON_DOWNLOADS": "never",
    }
    for name, value in os.environ.items():
        # The machine's own network setup (a TLS-inspecting egress, a package mirror),
        # which a fresh HOME would have too.
        network = re.search(r"CERT|CA_BUNDLE|PROXY|^UV_INDEX|^PIP_", name.upper())
        if network or name in ("PYENV_ROOT", "TMPDIR"):
            env.setdefault(name, value)
    assert shutil.which("devmeter", path=path) is None, "devmeter is on PATH before installing"
    # Tests run side by side: this install's proxy takes a free port, not 8788. (The
    # shell hook and doctor read the port the proxy reports.)
    config = home / ".config" / "devmeter" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text('[proxy]\nlisten = "127.0.0.1:0"\n')
    return clone, home, env


def wait_for_proxy(state: Path, install: subprocess.Popen[bytes], log: Path) -> dict[str, object]:
    deadline = time.monotonic() + 300  # a cold uv cache downloads mitmproxy and friends
    while time.monotonic() < deadline:
        if install.poll() is not None:
            pytest.fail(f"the install command ended ({install.returncode}):\n{log.read_text()}")
        try:
            info = json.loads(state.read_text())
        except (OSError, ValueError):
            time.sleep(0.2)
            continue
        return info
    pytest.fail(f"no proxy after 300 s:\n{log.read_text()}")


def stop(install: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the install's process group: `devmeter`, which the script exec'd."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(install.pid, signal.SIGTERM)
    try:
        install.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(install.pid, signal.SIGKILL)
        install.wait(10)


@needs_uv_and_git
def test_readme_install_puts_devmeter_on_path_and_doctor_is_all_green(tmp_path: Path) -> None:
    command = readme_install_command()
    assert command == "sh scripts/install.sh"
    clone, home, env = fresh_machine(tmp_path)
    log = tmp_path / "install.log"
    with log.open("wb") as out:
        # No DISPLAY: `devmeter` runs headless, in the foreground, as on a server.
        install = subprocess.Popen(
            shlex.split(command), cwd=clone, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        state = wait_for_proxy(home / ".local/share/devmeter/proxy.json", install, log)
        # A new interactive shell, outside the checkout: its startup file now has devmeter.
        outside = tmp_path / "elsewhere"
        outside.mkdir()
        doctor = subprocess.run(
            ["bash", "-ic", "devmeter doctor --json"],
            cwd=outside, env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    finally:
        stop(install)
    text = log.read_text(errors="replace")
    assert "bash: created ~/.bashrc" in text  # setup said what it changed
    checks = json.loads(doctor.stdout)
    assert {c["name"] for c in checks} >= {
        "devmeter_on_path", "proxy", "config", "ca", "shell", "trust_node", "trust_codex",
        "trust_python", "ledger", "tray", "notifications", "shell_integration", "autostart",
    }  # fmt: skip
    # A server (no desktop, no systemd user manager here): nothing would read a start-at-
    # login entry, so setup writes none and both say how to start it instead.
    assert "start at login: skipped:" in text and "`devmeter --headless`" in text
    not_green = [c for c in checks if c["status"] != "green"]
    assert [c["name"] for c in not_green] == ["autostart"], f"{not_green}\nlog:\n{text}"
    assert "`devmeter --headless`" in not_green[0]["fix"]
    assert doctor.returncode == 0
    by_name = {c["name"]: c for c in checks}
    assert by_name["devmeter_on_path"]["detail"] == str(home / ".local/bin/devmeter")
    assert f"127.0.0.1:{state['port']}" in by_name["proxy"]["detail"]

    # The README's undo: uninstall, then the command itself; the data stays, as it says.
    undo = subprocess.run(
        ["bash", "-ic", "devmeter uninstall && uv tool uninstall devmeter"],
        cwd=outside, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert undo.returncode == 0, undo.stdout + undo.stderr
    data = home / ".local/share/devmeter"
    assert "ledger and spend history: ~/.local/share/devmeter/ledger.sqlite" in undo.stdout
    assert "rm -rf ~/.local/share/devmeter" in undo.stdout
    left = {str(p.relative_to(home)) for p in home.rglob("*") if p.is_file()}
    assert not {".bashrc", ".zshrc", ".config/autostart/devmeter.desktop"} & left
    assert not (home / ".local/bin/devmeter").exists()
    assert (data / "ca" / "mitmproxy-ca-cert.pem").exists() and not (data / "shell").exists()


@needs_uv_and_git
def test_python_311_installs_with_the_shipped_override(tmp_path: Path) -> None:
    """mitmproxy 11.0.2 pins h11<=0.14 and Brotli<=1.1; devmeter needs h11>=0.16 (through
    httpx2) and brotli>=1.2. `uv tool install` does not read pyproject's [tool.uv]
    overrides, so on 3.11 it cannot resolve without scripts/uv-overrides.txt, and with it
    installs and runs."""
    py311 = system_python("3.11")
    if py311 is None:
        pytest.skip("no Python 3.11 on this machine")
    clone, home, env = fresh_machine(tmp_path)
    bare = subprocess.run(
        [str(UV), "tool", "install", "--python", py311, str(clone)],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert bare.returncode != 0 and re.search(r"h11|brotli", bare.stderr)  # as users met it

    done = subprocess.run(
        ["sh", "scripts/install.sh", "--no-setup", "--no-run"],
        cwd=clone, env={**env, "DEVMETER_PYTHON": py311}, capture_output=True, text=True,
        timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    tool_python = home / ".local/share/uv/tools/devmeter/bin/python"
    probe = subprocess.run(
        [str(tool_python), "-c",
         "import sys, h11, brotli, mitmproxy.version, genai_prices, devmeter.cli;"
         "print(sys.version_info[:2], mitmproxy.version.VERSION, h11.__version__,"
         " brotli.__version__)"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert re.fullmatch(r"\(3, 11\) 11\.0\.2 0\.1[6-9]\S* 1\.([2-9]|\d\d)\S*\n", probe.stdout), (
        probe.stdout
    )
    version = subprocess.run(
        [str(home / ".local/bin/devmeter"), "--version"], capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    assert re.fullmatch(r"devmeter \S+\n", version.stdout)
    assert not (home / ".bashrc").exists()  # --no-setup touched nothing


def python312() -> str | None:
    """A Python >= 3.12 here, as scripts/install.sh finds one (pyenv's included)."""
    candidates = [c for c in ("python3.13", "python3.12") if shutil.which(c)]
    pyenv = shutil.which("pyenv")
    root = subprocess.run([pyenv or "true", "root"], capture_output=True, text=True, check=False)
    if pyenv and root.returncode == 0:
        versions = Path(root.stdout.strip()).glob("versions/3.1[2-9]*/bin/python3")
        candidates += sorted(str(p) for p in versions)
    ask = "import sys; print(sys.executable) if sys.version_info >= (3, 12) else sys.exit(1)"
    for candidate in candidates:
        found = subprocess.run([candidate, "-c", ask], capture_output=True, text=True)
        if found.returncode == 0:
            return found.stdout.strip()
    return None


@needs_uv_and_git
def test_a_built_wheel_installs_with_the_override_and_sets_up(tmp_path: Path) -> None:
    """The README's `uv tool install --overrides scripts/uv-overrides.txt dist/*.whl`, on
    Python 3.11: the wheel carries packaging/, so setup writes the start-at-login entry."""
    py311 = system_python("3.11")
    if py311 is None:
        pytest.skip("no Python 3.11 on this machine")
    clone, home, env = fresh_machine(tmp_path)
    dist = tmp_path / "dist"
    subprocess.run(
        [str(UV), "build", "--wheel", "--out-dir", str(dist), str(clone)],
        env=env, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    [wheel] = dist.glob("devmeter-*.whl")
    subprocess.run(
        [str(UV), "tool", "install", "--python", py311,
         "--overrides", str(clone / "scripts/uv-overrides.txt"), str(wheel)],
        env=env, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    devmeter = home / ".local/bin/devmeter"
    done = subprocess.run(
        [str(devmeter), "setup", "--shell", "bash"],  # as from a desktop session
        cwd=tmp_path, env={**env, "XDG_CURRENT_DESKTOP": "XFCE"}, capture_output=True,
        text=True, timeout=60, check=True,
    )  # fmt: skip
    desktop = home / ".config/autostart/devmeter.desktop"
    entry = desktop.read_text()
    assert f'Exec="{devmeter}"' in entry, done.stdout
    [icon] = re.findall(r"(?m)^Icon=(.*)$", entry)  # devmeter's own, from the wheel
    assert icon.startswith(str(home / ".local/share/uv/tools/devmeter")) and Path(icon).is_file()
    subprocess.run([str(devmeter), "uninstall"], env=env, capture_output=True, check=True)
    assert not desktop.exists() and not (home / ".bashrc").exists()


@needs_uv_and_git
def test_pipx_installs_on_python_312_and_not_on_311(tmp_path: Path) -> None:
    """The README's `pipx install --python python3.12 .`; on 3.11 pipx cannot take an
    override, and fails as the README says."""
    py312 = python312()
    if py312 is None:
        pytest.skip("no Python >= 3.12 on this machine")
    clone, home, env = fresh_machine(tmp_path)
    pipx = [str(UV), "tool", "run", "pipx", "install", "--python"]
    done = subprocess.run(
        [*pipx, py312, "."], cwd=clone, env=env, capture_output=True, text=True, timeout=600,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    version = subprocess.run(
        [str(home / ".local/bin/devmeter"), "--version"], capture_output=True, text=True
    )
    assert version.stdout.startswith("devmeter ")
    py311 = system_python("3.11")
    if py311 is not None:
        failed = subprocess.run(
            [*pipx, py311, "--suffix", "-311", "."], cwd=clone, env=env, capture_output=True,
            text=True, timeout=600, check=False,
        )  # fmt: skip
        assert failed.returncode != 0 and re.search(r"h11|brotli", failed.stdout + failed.stderr)


@needs_uv_and_git
def test_install_sh_installs_uv_when_the_machine_has_none(tmp_path: Path) -> None:
    """A machine with Python but no uv: the script gets uv from PyPI with pip first."""
    clone, home, env = fresh_machine(tmp_path)
    uv_dir = str(Path(str(UV)).parent)
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != uv_dir)
    assert shutil.which("uv", path=env["PATH"]) is None
    done = subprocess.run(
        ["sh", "scripts/install.sh", "--no-setup", "--no-run"],
        cwd=clone, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "installing uv" in done.stdout
    assert (home / ".local/bin/uv").exists()  # pip --user, in the new HOME
    # ~/.local/bin is on the script's PATH (it put it there for uv), not on the user's:
    # it must still say so, or `devmeter` in this shell is "command not found".
    bin_dir = home / ".local" / "bin"
    assert f"(devmeter is in {bin_dir}, which is not on PATH: add it" in done.stdout
    version = subprocess.run(
        [str(home / ".local/bin/devmeter"), "--version"], capture_output=True, text=True
    )
    assert version.stdout.startswith("devmeter ")
