#!/usr/bin/env bash
# Sets up everything the whole test suite needs on a fresh machine, then runs it.
# The README's quick start and .ci/run both call this one script.
set -euo pipefail
cd "$(dirname "$0")/.."
export UV_PYTHON_DOWNLOADS=never  # use the machine's Pythons; never fetch one

say() { printf '\n== %s\n' "$*"; }

if ! command -v uv >/dev/null 2>&1; then
    say "installing uv (the project's installer: it resolves mitmproxy for 3.11 and 3.12+)"
    python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv
    export PATH="$HOME/.local/bin:$PATH"
fi

say "real clients for the end-to-end tests (Claude Code, Codex CLI, Gemini CLI)"
if command -v npm >/dev/null 2>&1; then
    npm ci --prefix tests/clients --no-audit --no-fund --loglevel=error
else
    echo "npm is missing: the Claude Code, Codex and Gemini CLI tests will say so and skip" >&2
fi

# A virtual display, a tray host and a screenshot tool for the tray tests, the system's
# PyGObject with GTK 3 and a D-Bus daemon for the tray's GTK backend; a session bus and a
# notification daemon for doctor's test notification; zsh, fish and strace for the shell
# hook's tests; dunst also shows the ask popups in their tests; headless Chromium for the
# dashboard's browser test; a real Prometheus server for the metrics export test.
missing=()
for tool in Xvfb tint2 import xdotool dbus-daemon dbus-launch dunst zsh fish strace chromium \
    prometheus; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
/usr/bin/python3 -c 'import gi; gi.require_version("Gtk", "3.0")' 2>/dev/null || missing+=(python3-gi)
if ((${#missing[@]})) && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing the virtual display, tray host, shells and Prometheus (${missing[*]})"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xvfb tint2 imagemagick xdotool \
        libnotify-bin dbus python3-gi gir1.2-gtk-3.0 dbus-x11 dunst zsh fish strace \
        chromium prometheus >/dev/null
fi

say "Python 3.11 with mitmproxy 11.0.2: the whole suite"
uv sync --locked --python 3.11 --extra test
uv run --locked --python 3.11 --extra test ruff check .
uv run --locked --python 3.11 --extra test ruff format --check .  # one layout: a diff shows what changed
uv run --locked --python 3.11 --extra test lint-imports  # the layers: [tool.importlinter]
uv run --locked --python 3.11 --extra test pytest "$@"

# mitmproxy 12 needs Python >= 3.12: run the proxy tests there too, in a venv of its own.
find_python312() {
    local root candidate
    root="$(pyenv root 2>/dev/null || true)"
    for candidate in "$root"/versions/3.1[2-9]*/bin/python python3.13 python3.12; do
        # pyenv shims exist for versions that are not selected: ask the interpreter itself.
        if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
            command -v "$candidate" 2>/dev/null || echo "$candidate"
            return 0
        fi
    done
    return 1
}
if [ "$#" = 0 ]; then
    if py312="$(find_python312)"; then
        say "Python $("$py312" -c 'import sys; print(sys.version.split()[0])') with mitmproxy 12: proxy tests"
        UV_PROJECT_ENVIRONMENT=.venv-mitmproxy12 uv run --locked --python "$py312" --extra test \
            pytest -m proxy
    else
        echo "no Python >= 3.12 found: mitmproxy 12 was not tested on this machine" >&2
    fi
fi
