#!/bin/sh
# Installs devmeter from this checkout onto PATH, sets it up, and runs it:
#
#   sh scripts/install.sh                 # the README's first command
#   sh scripts/install.sh --no-setup      # install only: no shell hook, no start at login
#   sh scripts/install.sh --no-run        # install (and set up), but do not start devmeter
#
# 1. uv, if missing (from PyPI, with pip).
# 2. `uv tool install` of this checkout: its own virtualenv, `devmeter` in uv's bin folder
#    (~/.local/bin). A Python >= 3.12 is preferred (mitmproxy 12); else 3.11 with mitmproxy
#    11.0.2, whose stale `h11<=0.14` pin scripts/uv-overrides.txt lifts (see the README).
# 3. `devmeter setup`: the shell hook for bash, zsh, fish and PowerShell, and start at
#    login; it says what it changed, keeps backups, and `devmeter uninstall` undoes it.
# 4. `devmeter`: the tray (headless without a desktop), in the foreground; Ctrl-C stops it.
set -eu

here="$(cd "$(dirname "$0")/.." && pwd)"
# The PATH of the shell that ran this script: installing uv below adds pip's user bin
# folder (also uv's and devmeter's) to this script's PATH only.
user_path="$PATH"
setup=1
run=1
for arg in "$@"; do
    case "$arg" in
        --no-setup) setup=0 ;;
        --no-run) run=0 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $arg (try --help)" >&2; exit 2 ;;
    esac
done

say() { printf '\n== %s\n' "$*"; }

find_uv() {
    for candidate in uv "$HOME/.local/bin/uv" "$HOME/.cargo/bin/uv"; do
        if command -v "$candidate" >/dev/null 2>&1; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

if ! uv="$(find_uv)"; then
    say "installing uv (it installs devmeter with the right mitmproxy for your Python)"
    # Debian's and Ubuntu's own Python refuse a --user install (PEP 668) unless told:
    # uv is one static binary in its wheel and touches no system package.
    python3 -m pip install --quiet --user uv 2>/dev/null \
        || python3 -m pip install --quiet --user --break-system-packages uv \
        || { echo "install.sh: could not install uv with pip (no pip? Debian: apt install python3-pip); or install uv as https://docs.astral.sh/uv/ says, then run this again" >&2; exit 1; }
    PATH="$(python3 -m site --user-base)/bin:$PATH"
    uv="$(find_uv)" || { echo "install.sh: uv was installed but is not on PATH" >&2; exit 1; }
fi

# A Python >= 3.12 on this machine (pyenv's too, which its shims hide unless selected).
find_python312() {
    root="$(pyenv root 2>/dev/null || true)"
    for candidate in python3.14 python3.13 python3.12 python3 "$root"/versions/3.1[2-9]*/bin/python3; do
        if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
            "$candidate" -c 'import sys; print(sys.executable)'
            return 0
        fi
    done
    return 1
}

if [ -n "${DEVMETER_PYTHON:-}" ]; then
    python="$DEVMETER_PYTHON"
elif python="$(find_python312)"; then
    :
else
    python=3.11
fi

say "installing devmeter with $python ($("$uv" --version))"
# --reinstall: the checkout may have changed without its version number changing.
"$uv" tool install --force --reinstall --python "$python" \
    --overrides "$here/scripts/uv-overrides.txt" "$here"

bin="$("$uv" tool dir --bin)"
devmeter="$bin/devmeter"
"$devmeter" --version

if [ "$setup" = 1 ]; then
    say "devmeter setup (undo: devmeter uninstall)"
    "$devmeter" setup
fi

case ":$user_path:" in
    *":$bin:"*) ;;
    *)
        if [ "$setup" = 1 ]; then
            echo "(devmeter is in $bin: new shells have it on PATH; in this one: export PATH=\"$bin:\$PATH\")"
        else
            echo "(devmeter is in $bin, which is not on PATH: add it, e.g. export PATH=\"$bin:\$PATH\")"
        fi
        ;;
esac

if [ "$run" = 1 ]; then
    say "starting devmeter (Ctrl-C stops it; with setup it also starts at login)"
    exec "$devmeter"
fi
