#!/usr/bin/env bash
# Screenshots of the devmeter tray icon and its menu in a real tray host.
#
#   scripts/tray_screenshot.sh            # writes assets/tray-screenshot.png, assets/tray-menu.png
#   OUT=/tmp/shots scripts/tray_screenshot.sh
#
# A virtual X display (Xvfb), a panel with a system tray (tint2), a ledger seeded with a
# plausible day (scripts/seed_tray_ledger.py) and the real app, `python -m devmeter`,
# which starts and supervises a real proxy (on a free port, in a throw-away DEVMETER_HOME).
#
# 1. The icon: pystray's plain X backend, from the project's own environment (uv).
# 2. The menu: pystray's X backend has no menus, so the same app runs again on pystray's
#    GTK backend (a GtkStatusIcon in the same tray), from a venv on Debian's python3 that
#    sees Debian's PyGObject (python3-gi; PyGObject in a uv venv needs a C build), inside
#    a private D-Bus session; xdotool right-clicks the icon, hovers "Live sessions",
#    takes the picture, then chooses "Quit devmeter" from the keyboard.
#
# Installs what it needs with apt-get when run as root on Debian/Ubuntu.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
out=${OUT:-assets}
mkdir -p "$out"
export UV_PYTHON_DOWNLOADS=never

need=(Xvfb tint2 import convert display xdotool dbus-run-session)
missing=()
for tool in "${need[@]}"; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
/usr/bin/python3 -c 'import gi; gi.require_version("Gtk", "3.0")' 2>/dev/null || missing+=(python3-gi)
if ((${#missing[@]})); then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing ${missing[*]}" >&2
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xvfb tint2 imagemagick xdotool \
            dbus python3-gi gir1.2-gtk-3.0 python3-venv >/dev/null
    else
        echo "missing: ${missing[*]} (Debian: apt-get install xvfb tint2 imagemagick xdotool dbus python3-gi gir1.2-gtk-3.0)" >&2
        exit 1
    fi
fi

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "${KEEP:-}" ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

# A display of our own: Xvfb picks a free number and tells us on fd 3.
Xvfb -displayfd 3 -screen 0 800x480x24 -nolisten tcp -noreset >"$work/xvfb.log" 2>&1 3>"$work/display" &
pids+=($!)
for _ in $(seq 100); do [ -s "$work/display" ] && break; sleep 0.05; done
export DISPLAY=":$(head -1 "$work/display")"
display -size 800x480 -window root xc:'#d8dee9' >/dev/null 2>&1 || true
py=$(uv run --quiet --extra test python -c 'import sys; print(sys.executable)')
# No window manager here: tint2 waits 15 s for one to say how many desktops there are.
"$py" - <<'PY'
from Xlib import display as xdisplay

d = xdisplay.Display()
root, cardinal = d.screen().root, d.intern_atom("CARDINAL")
root.change_property(d.intern_atom("_NET_NUMBER_OF_DESKTOPS"), cardinal, 32, [1])
root.change_property(d.intern_atom("_NET_CURRENT_DESKTOP"), cardinal, 32, [0])
d.close()
PY
tint2 -c scripts/tray_screenshot.tint2rc >"$work/tint2.log" 2>&1 &
pids+=($!)

# pystray's X backend docks only if a tray owns the selection when the icon is shown.
"$py" - <<'PY'
import time
from Xlib import display as xdisplay

d = xdisplay.Display()
tray = d.intern_atom(f"_NET_SYSTEM_TRAY_S{d.get_default_screen()}")
deadline = time.monotonic() + 20
while d.get_selection_owner(tray) == 0:
    if time.monotonic() > deadline:
        raise SystemExit("no system tray appeared (is tint2 running?)")
    time.sleep(0.05)
PY
sleep 0.5  # and has drawn the panel
export DEVMETER_HOME="$work/home"
mkdir -p "$DEVMETER_HOME"
printf '[proxy]\nlisten = "127.0.0.1:0"\n' >"$DEVMETER_HOME/config.toml"
"$py" scripts/seed_tray_ledger.py normal

wait_for_icon() {  # prints the icon's X, Y, WIDTH, HEIGHT as shell assignments
    for _ in $(seq 200); do
        win=$(xdotool search --name '^devmeter' 2>/dev/null | head -1 || true)
        if [ -n "$win" ]; then xdotool getwindowgeometry --shell "$win"; return 0; fi
        sleep 0.1
    done
    echo "the devmeter icon never appeared in the tray" >&2
    return 1
}

wait_listening() {  # the proxy child listens, and the tray has redrawn since
    for _ in $(seq 300); do [ -e "$DEVMETER_HOME/proxy.json" ] && break; sleep 0.1; done
    [ -e "$DEVMETER_HOME/proxy.json" ] || { echo "the proxy did not start" >&2; return 1; }
    sleep 1.5
}

wait_gone() {  # waits for a pid to exit, up to 20 s
    for _ in $(seq 200); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
    echo "pid $1 did not exit" >&2
    return 1
}

# 1. The icon, pystray's X backend.
PYSTRAY_BACKEND=xorg "$py" -m devmeter >"$work/xorg.log" 2>&1 &
app=$!
pids+=("$app")
eval "$(wait_for_icon)"
wait_listening
import -window root "$work/icon-root.png"
kill -TERM "$app"
wait_gone "$app"
[ ! -e "$DEVMETER_HOME/proxy.json" ] || { echo "the proxy outlived the tray" >&2; exit 1; }
# The panel's left end, 3x with nearest-neighbour scaling: every pixel is the tray's own.
convert "$work/icon-root.png" -crop 120x32+0+0 +repage -filter point -resize 300% \
    "$out/tray-screenshot.png"

# 2. The menu, pystray's GTK backend.
venv="${XDG_CACHE_HOME:-$HOME/.cache}/devmeter/screenshot-venv"
if [ ! -x "$venv/bin/python" ]; then
    uv venv --quiet --python /usr/bin/python3 --system-site-packages "$venv"
fi
uv pip install --quiet --python "$venv/bin/python" -e "$repo"
rm -f "$DEVMETER_HOME/ledger.sqlite"*
"$py" scripts/seed_tray_ledger.py normal
NO_AT_BRIDGE=1 PYSTRAY_BACKEND=gtk dbus-run-session -- "$venv/bin/python" -m devmeter >"$work/gtk.log" 2>&1 &
app=$!  # dbus-run-session: it ends when the app does
pids+=("$app")
eval "$(wait_for_icon)"
wait_listening
xdotool mousemove $((X + WIDTH / 2)) $((Y + HEIGHT / 2)) click 3
sleep 0.7
# Hover the first submenu ("Live sessions"): the row below the disabled totals row.
xdotool mousemove $((X + 80)) $((Y + HEIGHT + 41))
sleep 0.7
import -window root "$work/menu-root.png"
convert "$work/menu-root.png" -crop 620x250+0+0 +repage "$out/tray-menu.png"
xdotool key End Return  # "Quit devmeter", the last item
wait_gone "$app"
[ ! -e "$DEVMETER_HOME/proxy.json" ] || { echo "the proxy outlived the tray" >&2; exit 1; }

echo "wrote $out/tray-screenshot.png and $out/tray-menu.png" >&2
