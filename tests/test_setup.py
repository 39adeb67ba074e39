"""`devmeter setup` then `devmeter uninstall`: every file back as it was, byte for byte."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from devmeter.integration import autostart, rcblock, steps
from devmeter.paths import Paths, paths

# Latin-1 bytes, and no newline at the end: both must come back exactly.
ORIGINAL_BASHRC = b"# my bashrc\nalias ll='ls -l'\n# \xe9t\xe9\nexport EDITOR=vi"
ORIGINAL_AUTOSTART = b"[Desktop Entry]\nExec=something-of-mine\n"


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def machine(
    home: Path,
    *,
    platform: str = "linux",
    systemd: bool = False,
    login: str = "zsh",
    desktop: bool = True,
) -> steps.Environment:
    shells = {"bash": "/bin/bash", "zsh": "/bin/zsh", "fish": "/usr/bin/fish"}
    return steps.Environment(
        home=home,
        environ={"HOME": str(home), "SHELL": f"/bin/{login}"},
        platform=platform,
        which=shells.get,
        systemd_user=systemd,
        desktop=desktop,
    )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    (home / ".config" / "autostart").mkdir(parents=True)
    (home / ".config" / "fish").mkdir()  # fish has been run here
    (home / ".bashrc").write_bytes(ORIGINAL_BASHRC)  # bash too; zsh is the login shell
    return home


@pytest.fixture
def where(home: Path) -> Paths:
    return paths({"DEVMETER_HOME": str(home / ".local" / "share" / "devmeter")})


def fake_devmeter(home: Path) -> Path:
    exe = home / ".local" / "bin" / "devmeter"
    exe.parent.mkdir(parents=True, exist_ok=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    return exe


def test_setup_then_uninstall_leaves_every_file_as_it_was(home: Path, where: Paths) -> None:
    said: list[str] = []
    exe = fake_devmeter(home)
    before = snapshot(home)
    steps.setup(where, ("127.0.0.1", 8788), env=machine(home), devmeter=exe, say=said.append)

    bashrc = (home / ".bashrc").read_bytes()
    assert bashrc.startswith(ORIGINAL_BASHRC + b"\n# >>> devmeter shell integration >>>")
    assert (home / ".bashrc.devmeter-backup").read_bytes() == ORIGINAL_BASHRC
    assert rcblock.has_block((home / ".zshrc").read_text())
    assert (home / ".config" / "fish" / "conf.d" / "devmeter.fish").exists()
    desktop = (home / ".config" / "autostart" / "devmeter.desktop").read_text()
    assert f'Exec="{exe}"' in desktop
    icon = autostart.app_icon()
    assert icon is not None and icon.is_file() and f"Icon={icon}" in desktop
    # Each step says what it changed, and where the backup is.
    assert any("~/.bashrc" in line and "backup: ~/.bashrc.devmeter-backup" in line for line in said)
    assert any("created ~/.zshrc" in line for line in said)
    assert any("start at login" in line and "XDG autostart" in line for line in said)

    said.clear()
    assert steps.uninstall(where, env=machine(home), say=said.append) == 0
    assert snapshot(home) == before
    assert any("ledger" in line for line in said) and any("rm -rf" in line for line in said)
    assert any("uv tool uninstall devmeter" in line for line in said)


def test_uninstall_names_uv_by_its_path(home: Path, where: Paths) -> None:
    # install.sh puts uv in ~/.local/bin, which only setup's hook put on PATH: once
    # uninstall took the hook out, a bare `uv` is "command not found" in a new shell.
    uv = home / ".local" / "bin" / "uv"
    env = replace(machine(home), which={"uv": str(uv), "bash": "/bin/bash"}.get)
    steps.setup(where, ("127.0.0.1", 8788), env=env, devmeter=fake_devmeter(home), say=print)
    said: list[str] = []
    steps.uninstall(where, env=env, say=said.append)
    assert "And the command itself: `~/.local/bin/uv tool uninstall devmeter`" in said[-1]


def test_setup_twice_adds_one_block_and_uninstall_still_restores(home: Path, where: Paths) -> None:
    exe = fake_devmeter(home)
    before = snapshot(home)
    for _ in range(2):
        steps.setup(where, ("127.0.0.1", 8788), env=machine(home), devmeter=exe, say=lambda _: None)
    assert (home / ".bashrc").read_text(errors="replace").count(rcblock.BEGIN) == 1
    assert not list(home.glob(".bashrc.devmeter-backup-*"))  # the first backup is the original
    steps.uninstall(where, env=machine(home), say=lambda _: None)
    assert snapshot(home) == before


def test_user_edits_after_setup_survive_uninstall(home: Path, where: Paths) -> None:
    exe = fake_devmeter(home)
    steps.setup(where, ("127.0.0.1", 8788), env=machine(home), devmeter=exe, say=lambda _: None)
    with (home / ".bashrc").open("ab") as rc:
        rc.write(b"export MINE=1\n")
    said: list[str] = []
    steps.uninstall(where, env=machine(home), say=said.append)
    assert (home / ".bashrc").read_bytes() == ORIGINAL_BASHRC + b"\nexport MINE=1\n"
    # The file differs from the backup now, so the backup stays and uninstall says where.
    assert (home / ".bashrc.devmeter-backup").read_bytes() == ORIGINAL_BASHRC
    assert any("changed since setup" in line and ".bashrc.devmeter-backup" in line for line in said)


def test_an_existing_autostart_file_is_backed_up_and_put_back(home: Path, where: Paths) -> None:
    mine = home / ".config" / "autostart" / "devmeter.desktop"
    mine.write_bytes(ORIGINAL_AUTOSTART)
    exe = fake_devmeter(home)
    before = snapshot(home)
    steps.setup(where, ("127.0.0.1", 8788), env=machine(home), devmeter=exe, say=lambda _: None)
    assert mine.read_bytes() != ORIGINAL_AUTOSTART
    assert (mine.parent / "devmeter.desktop.devmeter-backup").read_bytes() == ORIGINAL_AUTOSTART
    steps.uninstall(where, env=machine(home), say=lambda _: None)
    assert snapshot(home) == before


def test_a_symlinked_startup_file_stays_a_symlink(home: Path, where: Paths, tmp_path: Path) -> None:
    dotfiles = tmp_path / "dotfiles" / "zshrc"
    dotfiles.parent.mkdir()
    dotfiles.write_bytes(b"setopt autocd\n")
    (home / ".zshrc").symlink_to(dotfiles)
    steps.setup(where, ("127.0.0.1", 8788), shells=["zsh"], with_autostart=False,
                env=machine(home), say=lambda _: None)  # fmt: skip
    assert (home / ".zshrc").is_symlink() and rcblock.has_block(dotfiles.read_text())
    steps.uninstall(where, env=machine(home), say=lambda _: None)
    assert (home / ".zshrc").is_symlink() and dotfiles.read_bytes() == b"setopt autocd\n"


def test_systemd_and_launchd_units_are_written_for_this_install(tmp_path: Path) -> None:
    exe = tmp_path / "my bin" / "devmeter"
    folder = autostart.packaging_dir()
    service = autostart.render(
        "linux/devmeter.service", (folder / "linux/devmeter.service").read_text(), exe, tmp_path
    )
    assert f'ExecStart="{exe}"' in service and "%h/.local/bin" not in service.split("[Service]")[1]
    plist = autostart.render(
        "macos/dev.devmeter.tray.plist",
        (folder / "macos/dev.devmeter.tray.plist").read_text(),
        exe,
        tmp_path,
    )
    assert f"<string>{exe}</string>" in plist and "@" not in plist.split("<plist")[1]
    choice = autostart.plan({"DISPLAY": ":0"}, "linux", tmp_path, systemd_user=True)
    assert choice.target == tmp_path / ".config/systemd/user/devmeter.service"
    headless = autostart.plan({}, "linux", tmp_path, systemd_user=True)
    assert headless.unit == "devmeter-headless.service"
    mac = autostart.plan({}, "darwin", tmp_path)
    assert mac.target == tmp_path / "Library/LaunchAgents/dev.devmeter.tray.plist"


def test_the_cli_setup_and_uninstall(tmp_path: Path) -> None:
    """`devmeter setup --shell bash --no-autostart` and `devmeter uninstall`, as a user runs
    them: a real process with its own HOME."""
    home = tmp_path / "h"
    home.mkdir()
    (home / ".bashrc").write_bytes(b"# mine\n")
    env = {**os.environ, "HOME": str(home), "DEVMETER_HOME": str(home / "dm")}
    run = ["python", "-m", "devmeter"]
    done = subprocess.run([*run, "setup", "--shell", "bash", "--no-autostart"], env=env,
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert "bash: added devmeter's block to ~/.bashrc" in done.stdout
    hook = home / "dm" / "shell" / "hook.bash"
    assert stat.S_ISREG(hook.stat().st_mode)
    done = subprocess.run([*run, "uninstall"], env=env, capture_output=True, text=True,
                          check=True)  # fmt: skip
    assert (home / ".bashrc").read_bytes() == b"# mine\n"
    assert not hook.exists() and not (home / ".bashrc.devmeter-backup").exists()
    assert "as it was before setup" in done.stdout
    assert "still running" not in done.stdout  # none runs: nothing to stop

    # A devmeter still running (headless, say: no tray menu to quit from) is named by its
    # pid, with what stops it.
    subprocess.run([*run, "setup", "--shell", "bash", "--no-autostart"], env=env,
                   capture_output=True, check=True)  # fmt: skip
    (home / "dm" / "supervisor.json").write_text(json.dumps({"pid": os.getpid()}))
    done = subprocess.run([*run, "uninstall"], env=env, capture_output=True, text=True,
                          check=True)  # fmt: skip
    last = done.stdout.strip().splitlines()[-1]
    assert "devmeter is still running" in last and f"`kill {os.getpid()}`" in last


def test_setup_run_again_by_an_upgrade_says_to_restart_the_older_devmeter(
    tmp_path: Path,
) -> None:
    # install.sh run again to upgrade (it runs setup) while devmeter runs: that one keeps
    # its old code, and would load the new files into it. Found as a new user upgrading.
    from devmeter.cli import _older_devmeter_running

    where = paths({"DEVMETER_HOME": str(tmp_path / "dm")})
    (tmp_path / "dm").mkdir()
    installed = tmp_path / "__init__.py"
    installed.write_text("")
    assert _older_devmeter_running(where, installed) is None  # none runs
    (tmp_path / "dm" / "supervisor.json").write_text(
        json.dumps({"pid": os.getpid(), "mode": "headless"})
    )
    now = time.time()
    os.utime(installed, (now + 60, now + 60))  # installed after this process started
    note = _older_devmeter_running(where, installed)
    assert note is not None
    assert f"devmeter (pid {os.getpid()}) was started before this install" in note
    assert f"`kill {os.getpid()}`" in note and "start `devmeter` again" in note
    os.utime(installed, (now - 3600 * 24 * 365, now - 3600 * 24 * 365))
    assert _older_devmeter_running(where, installed) is None  # it runs these files


def test_uninstall_takes_out_blocks_whose_record_was_deleted(home: Path, where: Paths) -> None:
    exe = fake_devmeter(home)
    steps.setup(where, ("127.0.0.1", 8788), env=machine(home), devmeter=exe, say=lambda _: None)
    steps.manifest_path(where).unlink()  # e.g. the data folder removed before uninstalling
    said: list[str] = []
    steps.uninstall(where, env=machine(home), say=said.append)
    bashrc = (home / ".bashrc").read_bytes()
    assert bashrc.startswith(ORIGINAL_BASHRC) and not rcblock.has_block(bashrc.decode("latin-1"))
    assert any("leftover devmeter block out of ~/.bashrc" in line for line in said)


def test_systemd_user_unit_enabled_and_disabled(
    home: Path, where: Paths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where a systemd user manager runs, setup writes the unit and enables it; uninstall
    disables and removes it. (No systemd in this container: a systemctl on PATH records
    what it is asked; the unit file itself is real.)"""
    calls = tmp_path / "systemctl.log"
    fake = tmp_path / "bin" / "systemctl"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$*" >> "{calls}"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    exe = fake_devmeter(home)
    env = machine(home, systemd=True)
    steps.setup(where, ("127.0.0.1", 8788), shells=[], env=env, devmeter=exe, say=lambda _: None)
    unit = home / ".config/systemd/user/devmeter-headless.service"
    assert f'ExecStart="{exe}" --headless' in unit.read_text()
    assert calls.read_text().splitlines() == [
        "--user daemon-reload",
        "--user enable devmeter-headless.service",
    ]
    steps.uninstall(where, env=env, say=lambda _: None)
    assert not unit.exists()
    assert calls.read_text().splitlines()[2:] == [
        "--user disable devmeter-headless.service",
        "--user daemon-reload",
    ]


def test_shells_nobody_uses_are_skipped_and_said(home: Path, where: Paths) -> None:
    """zsh installed but not the login shell, and no ~/.zshrc: no ~/.zshrc is created."""
    said: list[str] = []
    env = machine(home, login="bash")
    steps.setup(where, ("127.0.0.1", 8788), with_autostart=False, env=env, say=said.append)
    assert not (home / ".zshrc").exists()
    assert any(line.startswith("zsh: installed, but not your login shell") for line in said)
    assert rcblock.has_block((home / ".bashrc").read_text(errors="replace"))
    assert (home / ".config/fish/conf.d/devmeter.fish").exists()


def test_macos_bash_uses_the_login_file_bash_reads(tmp_path: Path) -> None:
    """A login bash reads the first of ~/.bash_profile, ~/.bash_login, ~/.profile: setup must
    not create a ~/.bash_profile that would hide the user's ~/.profile."""
    home = tmp_path / "mac"
    home.mkdir()
    env = machine(home, platform="darwin", login="bash")
    assert steps.rc_files("bash", env) == [home / ".bash_profile"]
    (home / ".profile").write_text("export A=1\n")
    assert steps.rc_files("bash", env) == [home / ".profile"]
    (home / ".bash_profile").write_text("")
    assert steps.rc_files("bash", env) == [home / ".bash_profile"]


def test_no_desktop_and_no_systemd_writes_no_autostart_and_doctor_says_so(
    home: Path, where: Paths
) -> None:
    """Found trying it in a container: setup wrote an XDG autostart entry that nothing
    would ever read, and doctor called it green."""
    from devmeter import doctor

    exe = fake_devmeter(home)
    said: list[str] = []
    steps.setup(where, ("127.0.0.1", 8788), env=machine(home, desktop=False), devmeter=exe,
                say=said.append)  # fmt: skip
    assert not (home / ".config" / "autostart" / "devmeter.desktop").exists()
    [line] = [s for s in said if s.startswith("start at login")]
    assert "skipped" in line and "no systemd user manager and no desktop session" in line
    assert "`devmeter --headless`" in line
    check = doctor.check_autostart(where, {}, "linux", desktop=False, systemd_user=False)
    assert check.status == "amber" and "`devmeter --headless`" in check.fix

    # An entry written on a desktop machine, read on one without a desktop: not green.
    steps.setup(where, ("127.0.0.1", 8788), env=machine(home), devmeter=exe, say=said.append)
    assert (home / ".config" / "autostart" / "devmeter.desktop").exists()
    assert doctor.check_autostart(where, {}, "linux", desktop=True).status == "green"
    headless = doctor.check_autostart(where, {}, "linux", desktop=False)
    assert headless.status == "amber" and "read by a desktop session" in headless.detail


def test_a_desktop_is_found_by_its_session_or_its_login_sessions(tmp_path: Path) -> None:
    assert autostart.has_desktop({"XDG_CURRENT_DESKTOP": "GNOME"}, data_dirs=[])
    assert autostart.has_desktop({"WAYLAND_DISPLAY": "wayland-0"}, data_dirs=[])
    assert not autostart.has_desktop({}, data_dirs=[tmp_path])
    (tmp_path / "xsessions").mkdir()
    (tmp_path / "xsessions" / "xfce.desktop").write_text("[Desktop Entry]\n")
    assert autostart.has_desktop({}, data_dirs=[tmp_path])  # setup over SSH on a desktop
    assert autostart.plan({}, "linux", tmp_path, systemd_user=False, desktop=False).kind == "none"


def test_uninstall_takes_devmeters_statusline_out_of_claude_codes_settings(
    home: Path, where: Paths
) -> None:
    # `devmeter statusline --install` writes this install's python into Claude Code's
    # settings; once `uv tool uninstall devmeter` removes it, Claude Code's statusline
    # would fail on every prompt. Uninstall puts the user's own statusline back.
    import json

    from devmeter import statusline

    settings = home / ".claude" / "settings.json"
    settings.parent.mkdir()
    theirs = {"type": "command", "command": "echo mine"}
    settings.write_text(
        '{"model": "opus", "statusLine": {"type": "command", "command": "echo mine"}}'
    )
    steps.setup(
        where, ("127.0.0.1", 8788), env=machine(home), devmeter=fake_devmeter(home), say=print
    )
    statusline.install(settings)
    assert statusline.MARK in settings.read_text()
    said: list[str] = []
    assert steps.uninstall(where, env=machine(home), say=said.append) == 0
    assert json.loads(settings.read_text()) == {"model": "opus", "statusLine": theirs}
    assert any("removed devmeter's statusline" in line for line in said)
    # Nothing to say when it was never installed.
    said.clear()
    steps.uninstall(where, env=machine(home), say=said.append)
    assert not any("statusline" in line for line in said)


def venv_devmeter(folder: Path) -> Path:
    exe = folder / "bin" / "devmeter"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    (folder / "bin" / "python").symlink_to(sys.executable)
    return exe


def test_setup_from_the_readmes_menu_venv_is_not_told_to_use_install_sh(
    home: Path, where: Paths
) -> None:
    """The README's recipe for the tray menu (a venv with PyGObject) ends with `devmeter
    setup` from that venv, so login starts the devmeter with the menu; pointing at
    install.sh there would trade it for one without. A checkout's .venv still hears it."""
    menu = venv_devmeter(home / ".local" / "share" / "devmeter-venv")
    said: list[str] = []
    steps.setup(where, ("127.0.0.1", 8788), env=machine(home), devmeter=menu, say=said.append)
    assert not [s for s in said if "virtualenv" in s], said
    entry = (home / ".config" / "autostart" / "devmeter.desktop").read_text()
    assert f'Exec="{menu}"' in entry

    checkout = home / "src" / "devmeter"
    checkout.mkdir(parents=True)
    (checkout / "pyproject.toml").write_text('[project]\nname = "devmeter"\n')
    said.clear()
    steps.setup(
        where, ("127.0.0.1", 8788), env=machine(home),
        devmeter=venv_devmeter(checkout / ".venv"), say=said.append,
    )  # fmt: skip
    assert [s for s in said if "is in a virtualenv (a checkout's?)" in s], said
