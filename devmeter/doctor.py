"""`devmeter doctor`: one screen of what works, and what to do about what does not.

Each check returns a `Check`: green (fine), amber (works, but something to do) or red
(something stops calls from being metered, or stops this shell's calls altogether).
`devmeter doctor` exits non-zero when any check is red. `--json` prints the list as
`{name, status, detail, fix}` objects; the names are a contract scripts read.

Checks read files, the environment and sockets; only `--notify` changes anything (it
shows one test notification).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import socket
import sqlite3
import sys
import tempfile
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from devmeter import ports
from devmeter.cabundle import PRIVATE_FILES
from devmeter.config import Config, ConfigError, load
from devmeter.integration import autostart, rcblock, steps
from devmeter.paths import Paths, read_proxy_state

Status = Literal["green", "amber", "red"]
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1", "[::1]"}


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class Proxy:
    """The proxy doctor found: where it listens, and whether it answers."""

    host: str
    port: int
    pid: int | None
    answers: bool
    alive: bool = False


def run_checks(
    paths: Paths,
    environ: Mapping[str, str] | None = None,
    *,
    notify: bool = False,
    which: Callable[[str], str | None] = shutil.which,
    platform: str = sys.platform,
) -> list[Check]:
    env = os.environ if environ is None else environ
    config, config_check = check_config(paths)
    proxy = find_proxy(paths, config)
    integration = check_shell_integration(paths, env, config.listen)
    hooked = hooked_startup_file(paths, env) is not None
    checks = [
        check_on_path(which),
        check_proxy(proxy, config),
        config_check,
        check_ca(paths),
        check_shell(proxy, env, hooked=hooked),
        *check_trust(paths, proxy, env, hooked=hooked),
        check_ledger(paths),
        check_tray(env, platform),
        check_notifications(env, platform, which, send=notify),
        integration,
        check_autostart(paths, env, platform),
    ]
    return [*checks, *status_file_checks(paths)]


def exit_status(checks: list[Check]) -> int:
    return 1 if any(c.status == "red" for c in checks) else 0


# --- the proxy -----------------------------------------------------------------------------


def find_proxy(paths: Paths, config: Config) -> Proxy:
    state = read_proxy_state(paths) or {}
    port, raw_pid = state.get("port"), state.get("pid")
    if isinstance(port, int):
        host = str(state.get("host") or "127.0.0.1")
        pid = raw_pid if isinstance(raw_pid, int) else None
        alive = pid is not None and _pid_alive(pid)
        return Proxy(host, port, pid, alive and _connects(host, port), alive)
    host, port = config.listen
    return Proxy(host, port, None, False)


def check_proxy(proxy: Proxy, config: Config) -> Check:
    if proxy.answers:
        return Check("proxy", "green", f"running on {proxy.host}:{proxy.port} (pid {proxy.pid})")
    if proxy.alive:
        return Check(
            "proxy",
            "red",
            f"pid {proxy.pid} runs but does not answer on {proxy.host}:{proxy.port} "
            "(still starting, or stuck)",
            f"wait a few seconds and run `devmeter doctor` again; if it stays so, "
            f"`kill {proxy.pid}` and start devmeter again",
        )
    host, port = config.listen
    holder = port_holder(host, port)
    if holder is not None:
        return Check(
            "proxy",
            "red",
            f"not running; {host}:{port} is taken by {holder}",
            f"stop that process, or give devmeter another port: `[proxy] listen = "
            f'"{host}:PORT"` in {paths_hint(config)}',
        )
    stale = f" (proxy.json names pid {proxy.pid}, which is gone)" if proxy.pid else ""
    return Check(
        "proxy",
        "red",
        f"not running{stale}: nothing is metered",
        "start it: `devmeter` (tray, or headless without a desktop), or `devmeter proxy`",
    )


def paths_hint(config: Config) -> str:
    return str(config.path) if config.path else "config.toml"


def port_holder(host: str, port: int) -> str | None:
    """Who listens on host:port, when it is taken: "pid 42 (nginx)", or "another process"."""
    if port == 0:
        return None
    try:
        import psutil

        for conn in psutil.net_connections(kind="tcp"):
            if conn.status != psutil.CONN_LISTEN or not conn.laddr or conn.laddr.port != port:
                continue
            if conn.laddr.ip not in (host, "0.0.0.0", "::") and host not in LOOPBACK_NAMES:
                continue
            if conn.pid is None:
                return "a process of another user"
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(conn.pid)
                return f"pid {conn.pid} ({' '.join(proc.cmdline()[:3]) or proc.name()})"
            return f"pid {conn.pid}"
    except Exception:  # psutil may be refused (macOS without root): try binding instead
        pass
    # Bound as the proxy binds (SO_REUSEADDR): the connections of a proxy just stopped
    # linger in TIME_WAIT for a minute, and a plain bind would call that port taken.
    error = ports.bind_error(host.strip("[]"), port)
    if error is not None and ports.is_in_use(error):
        return "another process"
    return None


# --- config, CA, ledger --------------------------------------------------------------------


def check_config(paths: Paths) -> tuple[Config, Check]:
    path = paths.config_file
    try:
        config = load(path)
    except ConfigError as exc:
        return Config(path=path), Check(
            "config", "red", f"bad config: {exc}", f"edit {path} as the message says"
        )
    except OSError as exc:
        return Config(path=path), Check("config", "red", f"cannot read {path}: {exc}")
    if not path.exists():
        return config, Check(
            "config", "green", f"no config file: defaults ({path}; `devmeter config --init`)"
        )
    return config, Check("config", "green", f"{path} is valid")


def check_ca(paths: Paths) -> Check:
    ca_dir, cert = paths.ca_dir, paths.ca_cert
    if not cert.exists():
        return Check(
            "ca",
            "red",
            f"no CA yet at {cert}: clients cannot trust devmeter",
            "start devmeter once (`devmeter` or `devmeter proxy`): it creates the CA",
        )
    if os.name != "posix":
        return Check("ca", "green", f"{cert}")
    loose = []
    if ca_dir.stat().st_mode & 0o077:
        loose.append(f"{ca_dir} is {oct(ca_dir.stat().st_mode & 0o777)}")
    keys = [ca_dir / name for name in PRIVATE_FILES if (ca_dir / name).exists()]
    for key in keys:
        if key.stat().st_mode & 0o077:
            loose.append(f"{key.name} is {oct(key.stat().st_mode & 0o777)}")
    if loose:
        fix = f"chmod 700 {shlex.quote(str(ca_dir))}"
        if keys:
            fix += " && chmod 600 " + " ".join(shlex.quote(str(k)) for k in keys)
        return Check(
            "ca",
            "amber",
            f"the CA's private key is readable by others ({'; '.join(loose)}): anyone holding "
            "it can forge any site for clients that trust it",
            fix,
        )
    return Check("ca", "green", f"{cert} (private key readable by you alone)")


def check_ledger(paths: Paths) -> Check:
    folder, ledger = paths.data_dir, paths.ledger
    probe_dir = folder if folder.exists() else _existing_parent(folder)
    try:
        with tempfile.NamedTemporaryFile(dir=probe_dir, prefix=".doctor-"):
            pass
    except OSError as exc:
        return Check(
            "ledger",
            "red",
            f"cannot write in {probe_dir}: {exc.strerror or exc}",
            f"make {folder} writable (or set DEVMETER_HOME to a folder that is)",
        )
    if not ledger.exists():
        return Check("ledger", "green", f"{ledger} (created with the first call)")
    if not os.access(ledger, os.R_OK | os.W_OK):
        return Check("ledger", "red", f"{ledger} is not writable", f"chmod u+rw {ledger}")
    try:
        conn = sqlite3.connect(f"{ledger.as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            (calls,) = conn.execute("SELECT count(*) FROM calls").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return Check("ledger", "red", f"{ledger} cannot be read: {exc}")
    return Check("ledger", "green", f"{ledger}: {calls} call{'' if calls == 1 else 's'}, writable")


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


# --- this shell --------------------------------------------------------------------------


def check_shell(proxy: Proxy, env: Mapping[str, str], hooked: bool = False) -> Check:
    """`hooked`: devmeter's shell hook is in this shell's startup file. Then `eval` is the
    wrong advice (it pins the shell to the proxy, dead once the proxy stops): the hook
    routes by itself, from the next prompt of a shell started after setup."""
    value = env.get("HTTPS_PROXY") or env.get("https_proxy")
    here = f"{proxy.host}:{proxy.port}"
    if not value:
        if hooked and not proxy.answers:
            fix = (
                "start devmeter (`devmeter`): the shell hook routes this shell from its next prompt"
            )
        elif hooked:
            fix = "open a new shell: devmeter's hook routes shells started since `devmeter setup`"
        else:
            fix = '`eval "$(devmeter env)"` here, or `devmeter setup` for every new shell'
        return Check(
            "shell",
            "amber",
            "this shell does not route through devmeter: tools started here are not metered",
            fix,
        )
    if not _same_address(value, proxy.host, proxy.port):
        return Check(
            "shell",
            "amber",
            f"HTTPS_PROXY is {value}, not devmeter ({here}): tools started here are not metered",
            '`eval "$(devmeter env)"` here, or `devmeter setup` for every new shell',
        )
    if not proxy.answers:
        return Check(
            "shell",
            "red",
            f"HTTPS_PROXY is {value} but no proxy answers there: HTTPS from this shell fails",
            'start devmeter (`devmeter`), or go direct: `eval "$(devmeter env --unset)"` '
            "takes out every variable `devmeter env` set; `devmeter setup`'s shell hook goes "
            "direct by itself when the proxy is down",
        )
    return Check("shell", "green", f"HTTPS_PROXY={value}: tools started here are metered")


def _same_address(url: str, host: str, port: int) -> bool:
    try:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        their_port = parts.port
    except ValueError:
        return False
    their_host = parts.hostname or ""
    same_host = their_host == host or {their_host, host} <= LOOPBACK_NAMES
    return same_host and their_port == port


def check_trust(
    paths: Paths, proxy: Proxy, env: Mapping[str, str], hooked: bool = False
) -> list[Check]:
    """Each known client's CA setting: does it make the client trust devmeter's CA?
    `hooked`: as for check_shell, the hook sets these (and HTTPS_PROXY), never `eval`."""
    https_proxy = env.get("HTTPS_PROXY") or env.get("https_proxy") or ""
    routed = _same_address(https_proxy, proxy.host, proxy.port)
    ca = _ca_body(paths.ca_cert)
    # Codex reads the first of its two that is set; Python clients read one each
    # (httpx and the SDKs SSL_CERT_FILE, requests REQUESTS_CA_BUNDLE).
    codex = next((v for v in ("CODEX_CA_CERTIFICATE", "SSL_CERT_FILE") if env.get(v)), None)
    clients = (
        ("trust_node", "Node (Claude Code, Gemini CLI, Node SDKs)", ("NODE_EXTRA_CA_CERTS",)),
        ("trust_codex", "Codex CLI", (codex or "CODEX_CA_CERTIFICATE",)),
        ("trust_python", "Python (SDKs, httpx, requests)", ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")),
    )
    # Without a CA, `devmeter env` would point these at files that do not exist yet, and
    # a bundle variable naming a missing file breaks every HTTPS client that reads it.
    first = "" if ca is not None else "start devmeter once (it creates the CA), then "
    checks = []
    for name, who, variables in clients:
        bad = [p for p in (_trust_problem(v, env.get(v), ca) for v in variables) if p]
        if not bad:
            settings = ", ".join(f"{v}={env.get(v)}" for v in variables)
            checks.append(Check(name, "green", f"{who} trusts devmeter's CA ({settings})"))
        elif routed:
            checks.append(
                Check(
                    name,
                    "red",
                    f"{who}: {'; '.join(bad)}, so its calls through devmeter fail TLS",
                    first + '`eval "$(devmeter env)"` sets it',
                )
            )
        else:
            if hooked and not proxy.answers:
                fix = (
                    "start devmeter (`devmeter`): the shell hook sets it, with HTTPS_PROXY, "
                    "from this shell's next prompt"
                )
            elif hooked:
                fix = "open a new shell: devmeter's hook sets it there, with HTTPS_PROXY"
            else:
                fix = first + '`eval "$(devmeter env)"` sets it, with HTTPS_PROXY'
            checks.append(
                Check(
                    name,
                    "amber",
                    f"{who}: {'; '.join(bad)} (this shell does not route through devmeter)",
                    fix,
                )
            )
    return checks


def _ca_body(cert: Path) -> str | None:
    try:
        text = cert.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    body = text.split("-----BEGIN CERTIFICATE-----", 1)[-1].split("-----END", 1)[0]
    return "".join(body.split()) or None


def _trust_problem(variable: str, value: str | None, ca: str | None) -> str | None:
    if not value:
        return f"{variable} is not set"
    path = Path(value)
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except OSError:
        return f"{variable}={value} cannot be read"
    if ca is None:
        return f"devmeter has no CA yet for {variable} to hold"
    if ca not in "".join(text.split()):
        return f"{variable}={value} does not hold devmeter's current CA"
    return None


# --- desktop -------------------------------------------------------------------------------


def _has_display(env: Mapping[str, str], platform: str) -> bool:
    if platform in ("darwin", "win32", "cygwin"):
        return True
    return bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))


def check_tray(env: Mapping[str, str], platform: str) -> Check:
    if platform == "darwin":
        return Check("tray", "green", "the macOS menu bar")
    if platform.startswith("win"):
        return Check("tray", "green", "the Windows notification area")
    if not _has_display(env, platform):
        return Check(
            "tray",
            "green",
            "no desktop in this session: `devmeter` runs headless (the proxy and a live line)",
        )
    owner = _x_tray_owner(env.get("DISPLAY"))
    if owner:
        return Check("tray", "green", f"a tray host is running on {env.get('DISPLAY')}")
    if owner is None:
        return Check(
            "tray",
            "amber",
            "could not ask the display for a tray host (Wayland or no X access)",
            "if no icon shows, install a tray host (GNOME: the AppIndicator extension)",
        )
    return Check(
        "tray",
        "amber",
        f"no tray host on {env.get('DISPLAY')}: the icon has nowhere to go",
        "start your panel's system tray (GNOME: the AppIndicator extension; or tint2, "
        "stalonetray); devmeter keeps metering meanwhile",
    )


def _x_tray_owner(display: str | None) -> bool | None:
    """Whether an X system tray (XEmbed) owns its selection; None when X cannot be asked."""
    if not display:
        return None
    try:
        from Xlib import X
        from Xlib import display as xdisplay

        conn = xdisplay.Display(display)
    except Exception:
        return None
    try:
        atom = conn.intern_atom(f"_NET_SYSTEM_TRAY_S{conn.get_default_screen()}")
        return conn.get_selection_owner(atom) != X.NONE
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):
            conn.close()


def check_notifications(
    env: Mapping[str, str], platform: str, which: Callable[[str], str | None], *, send: bool
) -> Check:
    if send:
        return _send_test_notification()
    if platform == "darwin":
        found = which("osascript")
    elif platform.startswith("win"):
        found = which("powershell")
    else:
        if not _has_display(env, platform) and not env.get("DBUS_SESSION_BUS_ADDRESS"):
            return Check(
                "notifications",
                "green",
                "no desktop in this session: alerts go to devmeter's output and `devmeter alerts`",
            )
        found = which("notify-send")
    if found:
        return Check(
            "notifications", "green", f"{Path(found).name} found (`--notify` sends a test)"
        )
    return Check(
        "notifications",
        "amber",
        "no notification command found: alerts reach only devmeter's output and `devmeter alerts`",
        "install libnotify's notify-send (Debian: libnotify-bin)"
        if not platform.startswith(("win", "darwin"))
        else "",
    )


def _send_test_notification() -> Check:
    from devmeter.alert_delivery import Notice, default_backends, show_first

    notice = Notice("devmeter: test notification", "Sent by `devmeter doctor --notify`.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # plyer warns about each piece it lacks
        shown_by, problems = show_first(default_backends(), notice)
    if shown_by is not None:
        return Check("notifications", "green", f"test notification sent through {shown_by}")
    failures = [f"{name}: {why}" for name, why in problems.items()]
    return Check(
        "notifications",
        "amber",
        "no backend could show a test notification (" + "; ".join(failures) + ")",
        "run a notification service (a desktop session, or dunst) and install notify-send",
    )


# --- what `devmeter setup` installed ---------------------------------------------------------


def check_on_path(which: Callable[[str], str | None], argv0: str | None = None) -> Check:
    """`argv0`: how this devmeter was started (sys.argv[0]); when it is the installed
    `devmeter` command, its folder is what PATH lacks (`install.sh --no-setup`, say)."""
    found = which("devmeter")
    if found:
        return Check("devmeter_on_path", "green", found)
    running = Path(argv0 if argv0 is not None else sys.argv[0])
    if running.name in ("devmeter", "devmeter.exe") and running.is_file():
        # The folder as typed, not resolved: uv's ~/.local/bin/devmeter links into the
        # tool's virtualenv, whose bin (its python among them) must not go on PATH.
        folder = str(running.absolute().parent)
        quoted = "'" + folder.replace("'", "'\\''") + "'"
        return Check(
            "devmeter_on_path",
            "amber",
            f"`devmeter` is not on PATH here (it is in {folder})",
            f'`export PATH={quoted}:"$PATH"` for this shell; for new shells, `devmeter setup` '
            "(its shell hook adds the folder) or the same line in your shell's startup file",
        )
    return Check(
        "devmeter_on_path",
        "amber",
        "`devmeter` is not on PATH here",
        "`sh scripts/install.sh` from a checkout, then open a new shell",
    )


def hooked_startup_file(paths: Paths, env: Mapping[str, str]) -> tuple[Path, str] | None:
    """The startup file (and its shell) that sources devmeter's hook, this shell's first."""
    shell = Path(env.get("SHELL", "")).name or ("powershell" if os.name == "nt" else "")
    records = [c for c in steps.load_manifest(paths) if c.get("kind") == "rc"]
    mine = [c for c in records if c.get("shell") == shell] or records
    for record in mine:
        path = Path(str(record.get("path")))
        with contextlib.suppress(OSError):
            if rcblock.has_block(path.read_text(encoding="utf-8", errors="replace")):
                return path, str(record.get("shell"))
    return None


def check_shell_integration(
    paths: Paths, env: Mapping[str, str], listen: tuple[str, int] | None = None
) -> Check:
    hooked = hooked_startup_file(paths, env)
    if hooked is None:
        shell = Path(env.get("SHELL", "")).name or ("powershell" if os.name == "nt" else "")
        return Check(
            "shell_integration",
            "amber",
            f"no devmeter hook in {shell or 'your shell'}'s startup file: new shells are not "
            "metered",
            "`devmeter setup`",
        )
    path, shell = hooked
    stale = _hook_for_another_port(paths, shell, listen) if listen else None
    if listen and stale:
        return Check(
            "shell_integration",
            "amber",
            f"{path} sources devmeter's hook, written for {stale}; the config now listens on "
            f"{listen[0]}:{listen[1]}, so a new shell names the old address when no proxy "
            "answers (it routes through the running proxy either way)",
            "`devmeter setup` again rewrites the hook for the configured address",
        )
    return Check(
        "shell_integration",
        "green",
        f"{path} sources devmeter's hook: new {shell} shells route through devmeter while it "
        "answers",
    )


def _hook_for_another_port(paths: Paths, shell: str, listen: tuple[str, int]) -> str | None:
    """The address a shell's hook was written for (`devmeter setup` bakes the configured
    one in), when the config has moved the proxy since; None when it matches."""
    from devmeter.integration import shellhook

    if shell not in shellhook.SHELLS:
        return None
    hook = paths.data_dir / "shell" / shellhook.hook_file_name(shell)
    try:
        text = hook.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    if shellhook.expected_text(listen) in text:
        return None
    start = text.find("expected at ")
    if start < 0:
        return None
    return text[start + len("expected at ") :].split("'")[0].split('"')[0].strip()


def check_autostart(
    paths: Paths,
    environ: Mapping[str, str] | None = None,
    platform: str = sys.platform,
    *,
    desktop: bool | None = None,
    systemd_user: bool | None = None,
) -> Check:
    env = os.environ if environ is None else environ
    autostarts = ("autostart", "systemd", "LaunchAgents", "Startup")

    def nothing_reads_xdg() -> bool:
        """An XDG autostart entry is read by a desktop session only (found trying it in a
        container: the entry was written and doctor said green, yet nothing started)."""
        if not platform.startswith("linux"):
            return False
        has_desktop = autostart.has_desktop(env) if desktop is None else desktop
        return not has_desktop

    for record in steps.load_manifest(paths):
        path = Path(str(record.get("path", "")))
        if record.get("kind") == "file" and any(part in path.parts for part in autostarts):
            if path.exists() and "autostart" in path.parts and nothing_reads_xdg():
                return Check(
                    "autostart",
                    "amber",
                    f"{path} is read by a desktop session, and this machine has none: "
                    "devmeter will not start at login",
                    autostart.START_BY_HAND,
                )
            if path.exists():
                return Check("autostart", "green", f"devmeter starts at login ({path})")
            return Check(
                "autostart",
                "amber",
                f"{path} is gone: devmeter will not start at login",
                "`devmeter setup`",
            )
    if nothing_reads_xdg():
        has_systemd = autostart.has_systemd_user() if systemd_user is None else systemd_user
        if not has_systemd:
            return Check("autostart", "amber", autostart.NO_AUTOSTART, autostart.START_BY_HAND)
    return Check("autostart", "amber", "devmeter does not start at login", "`devmeter setup`")


def status_file_checks(paths: Paths) -> list[Check]:
    """What the running proxy, tray and notifier say about themselves in their status
    files beside the ledger: a config edit the proxy refused (config_status.json), a
    port the tray cannot have or an icon not docked (supervisor.json), notifications
    that are not shown (notify-status.json). Read tolerantly: a file that is missing,
    unreadable, of another shape or written by a process now gone says nothing."""
    checks = []
    config = _status(paths, "config_status.json")
    if config is not None:
        error = config.get("config_error")
        where = str(config.get("config_file") or paths.config_file)
        if error:
            checks.append(
                Check(
                    "config_reload",
                    "amber",
                    f"the running proxy refused your last edit and keeps its last good config: "
                    f"{error}",
                    f"fix {where} as the message says; the proxy applies it within a second",
                )
            )
        else:
            checks.append(Check("config_reload", "green", f"the running proxy uses {where}"))
    tray = _status(paths, "supervisor.json")
    if tray is not None:
        state, detail = str(tray.get("state") or ""), str(tray.get("detail") or "")
        if state == "port_taken":
            holder = tray.get("port_holder")
            who = (
                f"pid {holder.get('pid')} ({holder.get('name')})"
                if isinstance(holder, dict)
                else "another process"
            )
            checks.append(
                Check(
                    "tray_proxy",
                    "red",
                    f"devmeter cannot listen on {tray.get('listen')}: {detail or who}",
                    f"stop {who}, or start devmeter on another port: "
                    "`devmeter --listen 127.0.0.1:PORT`",
                )
            )
        elif state in ("running", "external"):
            checks.append(Check("tray_proxy", "green", detail or f"proxy {state}"))
        elif state:
            checks.append(Check("tray_proxy", "amber", detail or f"proxy {state}"))
        icon = _tray_icon_check(tray)
        if icon is not None:
            checks.append(icon)
    notes = _status(paths, "notify-status.json", needs_pid=False)
    if notes is not None and notes.get("ok") is False:
        problems = notes.get("problems")
        said = (
            "; ".join(f"{k}: {v}" for k, v in problems.items())
            if isinstance(problems, dict)
            else ""
        )
        checks.append(
            Check(
                "notifications_delivery",
                "amber",
                f"the last alert could not be shown on the desktop ({said or 'no backend'})",
                "`devmeter doctor --notify` to try again; alerts are in `devmeter alerts`",
            )
        )
    return checks


def _tray_icon_check(tray: dict[str, Any]) -> Check | None:
    """Whether the running tray's icon is up, from what devmeter/tray/app.py notes in
    supervisor.json: `tray_backend` (pystray's, once the icon is made) and, from the
    backends that can tell (xorg, gtk), `tray`: "docked" or "waiting for a system tray"."""
    if tray.get("mode") == "headless":
        return Check("tray_icon", "green", "devmeter runs headless: a status line, no icon")
    backend = tray.get("tray_backend")
    through = f" (pystray's {backend} backend)" if isinstance(backend, str) and backend else ""
    docked = tray.get("tray")
    if docked == "docked":
        return Check("tray_icon", "green", f"the icon is in the tray{through}")
    if docked is False or (isinstance(docked, str) and docked):
        return Check(
            "tray_icon",
            "amber",
            f"devmeter runs, but its icon is not in the tray yet: no tray host{through}",
            "start your panel's tray; devmeter docks as soon as it appears",
        )
    if through:  # a backend that does not report docking (macOS, Windows, AppIndicator)
        return Check("tray_icon", "green", f"the tray shows its icon{through}")
    return None  # the icon is not made yet: nothing to say


def _status(paths: Paths, name: str, *, needs_pid: bool = True) -> dict[str, Any] | None:
    try:
        data = json.loads((paths.data_dir / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    pid = data.get("pid")
    if needs_pid and not (isinstance(pid, int) and _pid_alive(pid)):
        return None  # left behind by a process that is gone: it speaks for nothing now
    return data


# --- output ----------------------------------------------------------------------------------


def to_json(checks: list[Check]) -> str:
    return json.dumps([asdict(c) for c in checks], indent=1) + "\n"


MARKS = {"green": "ok", "amber": "!!", "red": "XX"}
COLOURS = {"green": "32", "amber": "33", "red": "31"}


def to_text(checks: list[Check], colour: bool = False) -> str:
    width = max(len(c.name) for c in checks)
    lines = []
    for check in checks:
        mark = MARKS[check.status]
        if colour:
            mark = f"\x1b[{COLOURS[check.status]}m{mark}\x1b[0m"
        lines.append(f"{mark} {check.name.ljust(width)}  {check.detail}")
        if check.fix and check.status != "green":
            lines.append(f"   {' ' * width}  fix: {check.fix}")
    reds = sum(c.status == "red" for c in checks)
    ambers = sum(c.status == "amber" for c in checks)
    if reds:
        verb = "stops" if reds == 1 else "stop"
        lines.append(f"\n{reds} problem{'s' if reds > 1 else ''} {verb} metering (XX above).")
    elif ambers:
        lines.append(f"\nMetering works; {ambers} thing{'s' if ambers > 1 else ''} to look at.")
    else:
        lines.append("\nAll good.")
    return "\n".join(lines) + "\n"


def _pid_alive(pid: int) -> bool:
    try:
        import psutil

        return bool(psutil.pid_exists(pid))
    except Exception:
        return False


def _connects(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host.strip("[]"), port), timeout=timeout):
            return True
    except OSError:
        return False
