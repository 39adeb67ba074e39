"""`devmeter setup` and `devmeter uninstall`: each change said, backed up and recorded.

setup writes a hook per shell (`shellhook`) into devmeter's data folder, adds a block
that sources it to each shell's startup file (`rcblock`, with a backup of the file
first) and installs the start-at-login entry (`autostart`). Every change goes into
setup.json beside the ledger; uninstall undoes exactly what that records, in reverse,
and checks each edited file against its backup: equal, byte for byte, the backup goes;
otherwise (the user edited the file since) it stays, and uninstall says so.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devmeter.integration import autostart, rcblock, shellhook
from devmeter.integration.autostart import Autostart
from devmeter.paths import Paths

Say = Callable[[str], None]
MANIFEST_VERSION = 1
BACKUP_SUFFIX = ".devmeter-backup"


def manifest_path(paths: Paths) -> Path:
    return paths.data_dir / "setup.json"


def load_manifest(paths: Paths) -> list[dict[str, Any]]:
    """The changes setup made, oldest first; [] when setup never ran (or its record is gone)."""
    try:
        data = json.loads(manifest_path(paths).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    changes = data.get("changes") if isinstance(data, dict) else None
    return [c for c in changes if isinstance(c, dict)] if isinstance(changes, list) else []


def _save_manifest(paths: Paths, changes: list[dict[str, Any]]) -> None:
    path = manifest_path(paths)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(
        json.dumps({"version": MANIFEST_VERSION, "changes": changes}, indent=1), encoding="utf-8"
    )
    tmp.replace(path)


# --- where things go ---------------------------------------------------------------------


@dataclass(frozen=True)
class Environment:
    """What setup needs to know about this machine; tests pass their own."""

    home: Path
    environ: Mapping[str, str]
    platform: str = sys.platform
    which: Callable[[str], str | None] = shutil.which
    systemd_user: bool | None = None  # None: ask systemctl
    desktop: bool | None = None  # None: look (autostart.has_desktop)

    @classmethod
    def current(cls) -> Environment:
        return cls(Path.home(), os.environ)


def installed_shells(env: Environment) -> list[str]:
    """The shells this machine has, by their commands on PATH."""
    found = [s for s in ("bash", "zsh", "fish") if env.which(s)]
    if env.which("pwsh") or env.which("powershell"):
        found.append("powershell")
    return found


def shells_in_use(env: Environment) -> tuple[list[str], list[str]]:
    """(shells to hook, shells installed but skipped). A shell is in use when it is the
    login shell, or its startup file (fish: its config folder) exists; setup does not
    create a ~/.zshrc for a zsh nobody runs. On Windows PowerShell is the shell."""
    login = Path(env.environ.get("SHELL", "")).name
    used, skipped = [], []
    for shell in installed_shells(env):
        if shell == "fish":
            present = rc_files("fish", env)[0].parent.parent.is_dir()
        else:
            present = any(rc.exists() for rc in rc_files(shell, env))
        if shell == login or present or (shell == "powershell" and env.platform == "win32"):
            used.append(shell)
        else:
            skipped.append(shell)
    return used, skipped


def rc_files(shell: str, env: Environment) -> list[Path]:
    """The startup file(s) an interactive shell of this kind reads."""
    home = env.home
    if shell == "bash":
        if env.platform != "darwin":
            return [home / ".bashrc"]
        # macOS terminals start login shells, which read the first of these that exists
        # and not ~/.bashrc: creating ~/.bash_profile would hide a ~/.profile.
        login_files = [home / name for name in (".bash_profile", ".bash_login", ".profile")]
        return [next((f for f in login_files if f.exists()), login_files[0])]
    if shell == "zsh":
        return [Path(env.environ.get("ZDOTDIR") or home) / ".zshrc"]
    if shell == "fish":
        config = Path(env.environ.get("XDG_CONFIG_HOME") or home / ".config")
        return [config / "fish" / "conf.d" / "devmeter.fish"]
    return _powershell_profiles(env)


def _powershell_profiles(env: Environment) -> list[Path]:
    """Each installed PowerShell's own profile path ($PROFILE: Documents may be moved)."""
    found: list[Path] = []
    for exe in ("pwsh", "powershell"):
        path = env.which(exe)
        if path is None:
            continue
        try:
            done = subprocess.run(
                [path, "-NoProfile", "-NonInteractive", "-Command", "$PROFILE.CurrentUserAllHosts"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        line = done.stdout.strip()
        if done.returncode == 0 and line and Path(line) not in found:
            found.append(Path(line))
    if not found:  # no PowerShell answered: pwsh's default on this OS
        if env.platform.startswith("win"):
            docs = env.home / "Documents"
            found.append(docs / "PowerShell" / "profile.ps1")
        else:
            found.append(env.home / ".config" / "powershell" / "profile.ps1")
    return found


def devmeter_command(argv0: str | None = None) -> Path | None:
    """The `devmeter` command running now (as installed), else the one on PATH."""
    arg = Path(sys.argv[0] if argv0 is None else argv0)
    if arg.stem == "devmeter" and arg.suffix in ("", ".exe") and arg.exists():
        return arg.absolute()
    found = shutil.which("devmeter")
    return Path(found) if found else None


def command_dir(devmeter: Path | None) -> Path | None:
    """devmeter's folder, to put on PATH: uv's and pipx's bin folder hold links to tools
    only, but a virtualenv's holds its `python` too, which must not shadow the user's."""
    if devmeter is None:
        return None
    folder = devmeter.parent
    if any((folder / name).exists() for name in ("python", "python3", "python.exe")):
        return None
    return folder


def _in_a_checkout(devmeter: Path) -> bool:
    """Whether `devmeter` is in a virtualenv inside a source checkout (`.venv/bin/devmeter`
    beside a pyproject.toml), which moves or goes with the checkout."""
    return (devmeter.parent.parent.parent / "pyproject.toml").exists()


# --- setup ---------------------------------------------------------------------------------


@dataclass
class Setup:
    paths: Paths
    listen: tuple[str, int]
    env: Environment
    say: Say
    devmeter: Path | None
    changes: list[dict[str, Any]] = field(default_factory=list)

    def shell(self, shell: str) -> None:
        settings = shellhook.settings_for(self.paths, self.listen, command_dir(self.devmeter))
        hook = self.paths.data_dir / "shell" / shellhook.hook_file_name(shell)
        self._write_file(hook, shellhook.hook_script(shell, settings), f"{shell} hook")
        # "#" starts a comment in all four shells.
        block = rcblock.block("#", shellhook.source_line(shell, hook))
        for rc in rc_files(shell, self.env):
            self._add_block(shell, rc, block)

    def _add_block(self, shell: str, rc: Path, new_block: str) -> None:
        previous = self._find("rc", rc)
        existed = rc.exists()
        original = _read(rc) if existed else ""
        added = rcblock.add(original, new_block)
        if previous is not None and str(previous.get("inserted", "")).startswith("\n"):
            added = rcblock.Added(added.text, "\n" + added.inserted)
        if added.text == original:
            self.say(f"{shell}: {_tilde(rc, self.env)} already sources the devmeter hook")
            return
        backup = previous.get("backup") if previous else None
        if existed and backup is None:
            backup = str(_backup(rc))
        rc.parent.mkdir(parents=True, exist_ok=True)
        _write(rc, added.text)
        record = {
            "kind": "rc",
            "shell": shell,
            "path": str(rc),
            "inserted": added.inserted,
            "created": previous.get("created", not existed) if previous else not existed,
            "backup": backup,
        }
        self._record(record)
        how = "created" if not existed else "added devmeter's block to"
        kept = f" (backup: {_tilde(Path(backup), self.env)})" if backup else ""
        self.say(f"{shell}: {how} {_tilde(rc, self.env)}{kept}")

    def autostart(self) -> None:
        if self.devmeter is None:
            self.say(
                "start at login: skipped: no installed `devmeter` command found "
                "(install it with `sh scripts/install.sh`, then run `devmeter setup` again)"
            )
            return
        if command_dir(self.devmeter) is None and _in_a_checkout(self.devmeter):
            # Only a checkout's own venv: the README's venv for the tray menu (PyGObject,
            # ~/.local/share/devmeter-venv) is meant to start at login, and install.sh's
            # devmeter has no menu.
            self.say(
                f"note: {self.devmeter} is in a virtualenv (a checkout's?): start at login "
                "runs it from there; `sh scripts/install.sh` installs a devmeter of its own"
            )
        choice = autostart.plan(
            self.env.environ,
            self.env.platform,
            self.env.home,
            self.env.systemd_user,
            self.env.desktop,
        )
        if choice.kind == "none":
            self.say(f"start at login: skipped: {autostart.NO_AUTOSTART}; "
                     f"{autostart.START_BY_HAND}")  # fmt: skip
            return
        template_path = autostart.packaging_dir() / choice.template
        if choice.kind == "windows-startup":
            self._windows_startup(template_path, choice)
            return
        text = autostart.render(
            choice.template,
            template_path.read_text(encoding="utf-8"),
            self.devmeter,
            self.env.home,
            autostart.app_icon(),
        )
        self._write_file(choice.target, text, "start at login")
        if choice.kind == "systemd" and choice.unit:
            ok = _systemctl("daemon-reload") and _systemctl("enable", choice.unit)
            self._record({"kind": "systemd", "unit": choice.unit})
            state = "enabled" if ok else "written, but `systemctl --user enable` failed"
            self.say(f"start at login: systemd user unit {choice.unit} {state}")
        elif choice.kind == "launchd":
            self._record({"kind": "launchd", "label": choice.unit})
            self.say("start at login: launchd agent dev.devmeter.tray, loaded at your next login")
        else:
            self.say("start at login: XDG autostart entry, started by your desktop at login")

    def _windows_startup(self, script: Path, choice: Autostart) -> None:
        powershell = self.env.which("powershell") or self.env.which("pwsh")
        if powershell is None:
            self.say("start at login: skipped: PowerShell not found")
            return
        done = subprocess.run(
            [
                powershell,
                "-NoProfile",
                "-ExecutionPolicy",
                "Bypass",
                "-File",
                str(script),
                "-Devmeter",
                str(self.devmeter),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            self.say(f"start at login: failed: {done.stderr.strip() or done.stdout.strip()}")
            return
        self._record({"kind": "file", "path": str(choice.target), "sha256": None, "backup": None})
        self.say(f"start at login: created {choice.target}")

    def _write_file(self, path: Path, text: str, what: str) -> None:
        previous = self._find("file", path)
        if path.exists() and _read(path) == text:
            if previous is None:  # someone else's identical file: not ours to remove
                self.say(f"{what}: {_tilde(path, self.env)} is already as setup writes it")
            else:
                self._record(previous)
            return
        backup = previous.get("backup") if previous else None
        if path.exists() and previous is None:
            backup = str(_backup(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        _write(path, text)
        self._record(_file_record(path, text, backup))
        kept = f" (backup of the old one: {_tilde(Path(backup), self.env)})" if backup else ""
        self.say(f"{what}: wrote {_tilde(path, self.env)}{kept}")

    def _find(self, kind: str, path: Path) -> dict[str, Any] | None:
        for change in self.changes:
            if change.get("kind") == kind and change.get("path") == str(path):
                return change
        return None

    def _record(self, change: dict[str, Any]) -> None:
        key = (change.get("kind"), change.get("path"), change.get("unit"), change.get("label"))
        self.changes = [
            c
            for c in self.changes
            if (c.get("kind"), c.get("path"), c.get("unit"), c.get("label")) != key
        ]
        self.changes.append(change)
        _save_manifest(self.paths, self.changes)


def setup(
    paths: Paths,
    listen: tuple[str, int],
    *,
    shells: Iterable[str] | None = None,
    with_autostart: bool = True,
    env: Environment | None = None,
    devmeter: Path | None = None,
    say: Say = print,
) -> int:
    env = env or Environment.current()
    run = Setup(paths, listen, env, say, devmeter, changes=load_manifest(paths))
    if shells is not None:
        chosen = list(shells)
    else:
        chosen, skipped = shells_in_use(env)
        for shell in skipped:
            say(
                f"{shell}: installed, but not your login shell and without a startup file: "
                f"skipped (`devmeter setup --shell {shell}` hooks it)"
            )
    for shell in chosen:
        run.shell(shell)
    if with_autostart:
        run.autostart()
    say(
        "Done. New shells route their tools through devmeter while it runs, and go direct "
        "(saying so once) when it does not: open a new shell to use it. "
        "`devmeter doctor` checks it all; `devmeter uninstall` undoes it."
    )
    return 0


# --- uninstall -----------------------------------------------------------------------------


def uninstall(
    paths: Paths,
    *,
    env: Environment | None = None,
    say: Say = print,
    running: str | None = None,
) -> int:
    """Undo what setup recorded. `running`: how to stop the devmeter still running (with
    its pid), said last; None when none runs."""
    env = env or Environment.current()
    changes = load_manifest(paths)
    if not changes:
        say(f"Nothing to undo: no record of `devmeter setup` at {manifest_path(paths)}.")
    failed: list[dict[str, Any]] = []
    for change in reversed(changes):
        kind = change.get("kind")
        try:
            if kind == "rc":
                _undo_rc(change, env, say)
            elif kind == "file" and _undo_file(change, env, say):
                failed.append(change)
            elif kind == "systemd":
                _systemctl("disable", str(change.get("unit")))
                say(f"start at login: disabled systemd user unit {change.get('unit')}")
            elif kind == "launchd":
                _launchctl_bootout(str(change.get("label")))
                say(f"start at login: unloaded launchd agent {change.get('label')}")
        except OSError as exc:
            failed.append(change)
            say(f"could not undo a change to {change.get('path')}: {exc}")
    if any(c.get("kind") == "systemd" for c in changes):
        _systemctl("daemon-reload")
    _sweep_leftover_blocks(env, say)
    _undo_statusline(env, say)
    if failed:  # kept, so that `devmeter uninstall` can try those again
        _save_manifest(paths, list(reversed(failed)))
    else:
        manifest_path(paths).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        (paths.data_dir / "shell").rmdir()
    _say_what_is_left(paths, env, say)
    if running:
        say(f"devmeter is still running and keeps running until stopped. {running}")
    return 1 if failed else 0


def _undo_statusline(env: Environment, say: Say) -> None:
    """Take out devmeter's statusline (`devmeter statusline --install`), putting back the
    one it was chained to: it runs this install's python, which uninstalling the command
    removes, and Claude Code would then fail to draw its statusline."""
    from devmeter import statusline

    config = env.environ.get("CLAUDE_CONFIG_DIR")
    base = Path(config).expanduser() if config else env.home / ".claude"
    try:
        done = statusline.uninstall(base / "settings.json")
    except (statusline.SettingsError, OSError) as exc:
        say(f"Claude Code's statusline: not changed ({exc}); `devmeter statusline --uninstall`")
        return
    if done.startswith("removed"):
        say(done)


def _sweep_leftover_blocks(env: Environment, say: Say) -> None:
    """Blocks setup.json does not know of (its folder deleted first, say): out too."""
    bash_files = (".bashrc", ".bash_profile", ".bash_login", ".profile")
    candidates = [env.home / name for name in bash_files]
    for shell in ("zsh", "fish"):
        candidates += rc_files(shell, env)
    if "powershell" in installed_shells(env):
        candidates += rc_files("powershell", env)
    for rc in dict.fromkeys(candidates):
        with contextlib.suppress(OSError):
            text = _read(rc)
            if rcblock.has_block(text):
                _write(rc, rcblock.remove(text, None))
                say(f"took a leftover devmeter block out of {_tilde(rc, env)}")


def _undo_rc(change: dict[str, Any], env: Environment, say: Say) -> None:
    rc = Path(str(change["path"]))
    shell = change.get("shell", "shell")
    backup = Path(change["backup"]) if change.get("backup") else None
    if not rc.exists():
        say(f"{shell}: {_tilde(rc, env)} is gone already")
        return
    text = rcblock.remove(_read(rc), change.get("inserted"))
    if change.get("created") and text == "":
        rc.unlink()
        with contextlib.suppress(OSError):
            rc.parent.rmdir()  # fish's conf.d, if setup's file was all it held
        say(f"{shell}: removed {_tilde(rc, env)} (setup had created it)")
        return
    _write(rc, text)
    if backup is None or not backup.exists():
        say(f"{shell}: took devmeter's block out of {_tilde(rc, env)}")
        return
    if rc.read_bytes() == backup.read_bytes():
        backup.unlink()
        say(f"{shell}: took devmeter's block out of {_tilde(rc, env)}: as it was before setup")
        return
    say(
        f"{shell}: took devmeter's block out of {_tilde(rc, env)}; it changed since setup, so "
        f"the copy from before setup stays at {_tilde(backup, env)}"
    )


def _undo_file(change: dict[str, Any], env: Environment, say: Say) -> bool:
    """Remove (or put back) a file setup wrote; True when it had to be left (changed since)."""
    path = Path(str(change["path"]))
    backup = Path(change["backup"]) if change.get("backup") else None
    if not path.exists():
        if backup is not None and backup.exists():
            backup.replace(path)
            say(f"put back {_tilde(path, env)} (from before setup)")
        return False
    expected = change.get("sha256")
    if expected is not None and _sha256(path.read_bytes()) != expected:
        say(f"left {_tilde(path, env)}: it changed since setup wrote it; delete it yourself")
        return True
    if backup is not None and backup.exists():
        backup.replace(path)
        say(f"put back {_tilde(path, env)} as it was before setup")
    else:
        path.unlink()
        say(f"removed {_tilde(path, env)}")
    with contextlib.suppress(OSError):
        path.parent.rmdir()  # only if setup's file was all it held
    return False


def _say_what_is_left(paths: Paths, env: Environment, say: Say) -> None:
    data = _tilde(paths.data_dir, env)
    say("")
    say("Left in place (your data):")
    say(f"  ledger and spend history: {_tilde(paths.ledger, env)}")
    say(
        f"  devmeter's CA: {_tilde(paths.ca_dir, env)} (only clients you pointed at it trust it; "
        "devmeter never adds it to the system's trust store)"
    )
    if paths.config_file.exists():
        say(f"  config: {_tilde(paths.config_file, env)}")
    say("Remove them for good (this deletes your spend history):")
    rm = "Remove-Item -Recurse" if env.platform.startswith("win") else "rm -rf"
    say(f"  {rm} {_quoted(data)}")
    if paths.config_file.exists() and paths.config_file.parent != paths.data_dir:
        say(f"  {rm} {_quoted(_tilde(paths.config_file.parent, env))}")
    # By its path: install.sh may have put uv in the folder only setup's hook had on PATH,
    # which a new shell no longer has once the hook is gone.
    found = env.which("uv")
    uv = _quoted(_tilde(Path(found), env)) if found else "uv"
    say(f"And the command itself: `{uv} tool uninstall devmeter` (or `pipx uninstall devmeter`).")


# --- small helpers -------------------------------------------------------------------------


def _read(path: Path) -> str:
    # surrogateescape: any bytes come back out exactly as they went in.
    return path.read_bytes().decode("utf-8", "surrogateescape")


def _write(path: Path, text: str) -> None:
    # In place, not by rename: a startup file is often a link into a dotfiles repo.
    with path.open("wb") as out:
        out.write(text.encode("utf-8", "surrogateescape"))


def _backup(path: Path) -> Path:
    backup = path.with_name(path.name + BACKUP_SUFFIX)
    if backup.exists():  # never overwrite an older backup: it may be the only original
        backup = path.with_name(f"{path.name}{BACKUP_SUFFIX}-{time.strftime('%Y%m%d-%H%M%S')}")
    shutil.copy2(path, backup)
    return backup


def _file_record(path: Path, text: str, backup: str | None) -> dict[str, Any]:
    data = text.encode("utf-8", "surrogateescape")
    return {"kind": "file", "path": str(path), "sha256": _sha256(data), "backup": backup}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tilde(path: Path, env: Environment) -> str:
    try:
        return "~/" + str(path.relative_to(env.home)).replace(os.sep, "/")
    except ValueError:
        return str(path)


def _quoted(value: str) -> str:
    """A path to paste into a shell: quoted when it needs it, keeping a leading ~/ live."""
    if not any(c in value for c in " '\"$`\\"):
        return value
    head, rest = ("~/", value[2:]) if value.startswith("~/") else ("", value)
    return head + "'" + rest.replace("'", "'\\''") + "'"


def _systemctl(*args: str) -> bool:
    exe = shutil.which("systemctl")
    if exe is None:
        return False
    try:
        done = subprocess.run([exe, "--user", *args], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _launchctl_bootout(label: str) -> None:
    exe = shutil.which("launchctl")
    if exe is None:
        return
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        subprocess.run(
            [exe, "bootout", f"gui/{os.getuid()}/{label}"],
            capture_output=True,
            timeout=30,
            check=False,
        )
