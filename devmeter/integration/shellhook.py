"""The shell hook `devmeter setup` installs: route a shell's tools through devmeter only
while its proxy answers.

`eval "$(devmeter env)"` in a startup file breaks every HTTPS call in that shell once the
proxy stops. The hook instead checks before each prompt, and once when the shell starts,
whether the proxy answers: proxy.json (written by the running proxy, removed when it
stops) names its address and pid, the pid must be alive and, where the shell can open a
socket itself (bash's /dev/tcp, zsh's ztcp, PowerShell's TcpClient), the port must accept
a connection. While it answers, the shell exports the same variables as `devmeter env`;
when it does not, it puts back what the user had (or unsets them) and says so once.

The check runs on every prompt, so it uses the shell's own builtins only: no Python and
no extra process (fish, which cannot open a socket, checks the pid through /proc on
Linux and runs `kill -0` elsewhere).

Each function here returns the text of one shell's hook script; nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from devmeter.paths import Paths
from devmeter.shellenv import SHELLS, proxy_environment

# Placeholders for the proxy's address in the environment `devmeter env` prints: the
# variables whose value is the proxy URL change with the port; the rest are fixed paths.
_HOST, _PORT = "devmeter.invalid", 1


@dataclass(frozen=True)
class HookSettings:
    state_file: Path  # proxy.json
    default_host: str  # where the proxy listens when started with this config (for messages)
    default_port: int
    url_names: tuple[str, ...]  # variables set to the proxy's URL
    fixed: tuple[tuple[str, str], ...]  # variables set to a fixed value (CA paths, NO_PROXY)
    bin_dir: Path | None  # put on PATH when missing (devmeter's own bin dir, never a venv's)

    @property
    def names(self) -> tuple[str, ...]:
        return (*self.url_names, *(name for name, _ in self.fixed))

    @property
    def expected(self) -> str:
        return expected_text((self.default_host, self.default_port))


def expected_text(listen: tuple[str, int]) -> str:
    """What a hook says where it expects the proxy when it never saw one answer; baked in
    by setup (doctor looks for it to tell a hook written for another port)."""
    return f"expected at {listen[0]}:{listen[1]}"


def settings_for(paths: Paths, listen: tuple[str, int], bin_dir: Path | None) -> HookSettings:
    env = proxy_environment(paths, _HOST, _PORT)
    url = f"http://{_HOST}:{_PORT}"
    return HookSettings(
        state_file=paths.proxy_state,
        default_host=listen[0],
        default_port=listen[1],
        url_names=tuple(name for name, value in env.items() if value == url),
        fixed=tuple((name, value) for name, value in env.items() if value != url),
        bin_dir=bin_dir,
    )


def hook_script(shell: str, settings: HookSettings) -> str:
    if shell not in SHELLS:
        raise ValueError(f"unknown shell {shell!r}; choose one of {', '.join(SHELLS)}")
    if shell == "fish":
        return _fish(settings)
    if shell == "powershell":
        return _powershell(settings)
    return _posix(shell, settings)


def hook_file_name(shell: str) -> str:
    return {"bash": "hook.bash", "zsh": "hook.zsh", "fish": "hook.fish"}.get(shell, "hook.ps1")


def source_line(shell: str, hook: Path) -> str:
    """The one line a startup file needs: source the hook if it is still there."""
    if shell == "fish":
        return f"test -r {_sq(str(hook))}; and source {_sq(str(hook))}"
    if shell == "powershell":
        quoted = _ps(str(hook))
        return f"if (Test-Path -LiteralPath {quoted}) {{ . {quoted} }}"
    return f"if [ -r {_sq(str(hook))} ]; then . {_sq(str(hook))}; fi"


# --- bash and zsh ------------------------------------------------------------------------


_HEADER = """\
# devmeter shell integration for {shell}, written by `devmeter setup` for this install.
# `devmeter setup` rewrites this file and `devmeter uninstall` removes it.
#
# Before each prompt (and once now) it checks whether devmeter's proxy answers: proxy.json
# names its address and pid, and {probe}.
# While it answers, this shell's tools go through it (the variables `devmeter env` sets);
# when it does not, they go straight out, and the shell says so once. The check uses the
# shell's builtins only: no Python, no new process on a prompt.
"""

_POSIX_PROBE = {
    "bash": "the pid must be alive and its port accept a\n# connection (bash's /dev/tcp)",
    "zsh": "the pid must be alive and its port accept a\n# connection (zsh/net/tcp's ztcp)",
}

_POSIX_BODY = r"""
__devmeter_state_file=@STATE_FILE@
__devmeter_expected=@EXPECTED@
__devmeter_url=''

__devmeter_probe() {
    # proxy.json is one small JSON object: {"host": "127.0.0.1", "port": 8788, "pid": 42, ...}
    local state='' host port pid
    [ -r "$__devmeter_state_file" ] || return 1
    @READ_STATE@
    state=${state//[[:space:]]/}
    case $state in *'"port":'*'"pid":'*|*'"pid":'*'"port":'*) ;; *) return 1 ;; esac
    port=${state#*\"port\":}; port=${port%%[!0-9]*}
    pid=${state#*\"pid\":}; pid=${pid%%[!0-9]*}
    host=127.0.0.1
    case $state in *'"host":"'*) host=${state#*\"host\":\"}; host=${host%%\"*} ;; esac
    [ -n "$port" ] && [ -n "$pid" ] && [ -n "$host" ] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    __devmeter_connect "$host" "$port" || return 1
    __devmeter_url="http://$host:$port"
}

__devmeter_check() {
    if __devmeter_probe; then
        if [ "$__devmeter_now" != "$__devmeter_url" ]; then
            __devmeter_route "$__devmeter_url"
            __devmeter_now=$__devmeter_url
        fi
        if [ "$__devmeter_said" = down ]; then
            printf '%s\n' "devmeter: the proxy answers at ${__devmeter_url#http://}; tools in this shell are metered from now on." >&2
        fi
        __devmeter_said=up
    else
        if [ -n "$__devmeter_now" ]; then
            # Where it was, not the listen setup baked in: the config may have moved it.
            __devmeter_expected="it was at ${__devmeter_now#http://}"
            __devmeter_direct "$__devmeter_now"
            __devmeter_now=''
        fi
        if [ "$__devmeter_said" != down ]; then
            printf '%s\n' "devmeter: no proxy answers ($__devmeter_expected); tools in this shell go direct, unmetered, until one does. Start it: devmeter" >&2
            __devmeter_said=down
        fi
    fi
}
"""

_BASH_CONNECT = r"""
__devmeter_connect() {
    # Open and close a connection in this shell (a redirection, no new process).
    if [ "${BASH_VERSINFO[0]}" -gt 4 ] || { [ "${BASH_VERSINFO[0]}" -eq 4 ] && [ "${BASH_VERSINFO[1]}" -ge 1 ]; }; then
        # A descriptor bash picks itself, so none of the user's is touched (bash >= 4.1).
        eval 'exec {__devmeter_fd}<>"/dev/tcp/$1/$2"' 2>/dev/null || return 1
        eval 'exec {__devmeter_fd}<&-'
    else
        { exec 9<>"/dev/tcp/$1/$2"; } 2>/dev/null || return 1
        exec 9<&-
    fi
}

case ";${PROMPT_COMMAND:-};" in
    *";__devmeter_check;"*) ;;
    *) PROMPT_COMMAND="__devmeter_check${PROMPT_COMMAND:+;$PROMPT_COMMAND}" ;;
esac
__devmeter_check
"""

_ZSH_CONNECT = r"""
zmodload zsh/net/tcp 2>/dev/null
__devmeter_connect() {
    (( ${+builtins[ztcp]} )) || return 0  # no ztcp in this zsh: the live pid has to do
    local REPLY
    ztcp "$1" "$2" 2>/dev/null || return 1
    ztcp -c "$REPLY" 2>/dev/null
    return 0
}

autoload -Uz add-zsh-hook && add-zsh-hook precmd __devmeter_check
__devmeter_check
"""


def _posix(shell: str, s: HookSettings) -> str:
    lines = [_HEADER.format(shell=shell, probe=_POSIX_PROBE[shell])]
    if s.bin_dir is not None:
        bin_dir = _sq(str(s.bin_dir))
        lines.append(
            "# devmeter's own command on PATH (where `uv tool install` / pipx put it).\n"
            f'case ":$PATH:" in *:{bin_dir}:*) ;; *) export PATH={bin_dir}:"$PATH" ;; esac\n'
        )
    if shell == "zsh":
        lines.append("[[ -o interactive ]] || return 0  # only shells a person types in\n")
    else:
        lines.append("case $- in *i*) ;; *) return 0 ;; esac  # only shells a person types in\n")
    # Once per shell, even if its startup file is sourced again. A shell started from a
    # routed one inherits devmeter's values (DEVMETER_ROUTED names the URL): those are
    # not the user's, and this shell takes the routing over from its parent.
    lines.append('if [ -z "${__devmeter_loaded-}" ]; then')
    lines.append("    __devmeter_loaded=1")
    lines.append(
        "    __devmeter_now=${DEVMETER_ROUTED-}  # the proxy URL tools here use; '' when direct"
    )
    lines.append("    __devmeter_said=''  # what this shell last said about the proxy: up or down")
    lines.append(
        "    # What the user had before devmeter set anything: put back when going direct."
    )
    for name in s.names:
        mine = '"${DEVMETER_ROUTED-}"' if name in s.url_names else _sq(dict(s.fixed)[name])
        lines.append(
            f'    if [ -n "${{{name}+x}}" ] && [ "${name}" != {mine} ]; then '
            f'__devmeter_had_{name}=1; __devmeter_was_{name}="${name}"; fi'
        )
    lines.append("fi")
    lines.append("\n__devmeter_route() {  # $1: the proxy URL")
    lines.append('    export DEVMETER_ROUTED="$1"')
    for name in s.url_names:
        lines.append(f'    export {name}="$1"')
    for name, value in s.fixed:
        lines.append(f"    export {name}={_sq(value)}")
    lines.append("}\n")
    lines.append(
        "__devmeter_direct() {  # $1: the URL set; a value the user changed since is theirs"
    )
    lines.append('    if [ "${DEVMETER_ROUTED-}" = "$1" ]; then unset DEVMETER_ROUTED; fi')
    for name in s.names:
        set_to = '"$1"' if name in s.url_names else _sq(dict(s.fixed)[name])
        lines.append(
            f'    if [ "${{{name}-}}" = {set_to} ]; then\n'
            f'        if [ -n "${{__devmeter_had_{name}-}}" ]; then '
            f'export {name}="$__devmeter_was_{name}"; else unset {name}; fi\n'
            "    fi"
        )
    lines.append("}")
    read_state = (
        'state=$(<"$__devmeter_state_file")  # zsh reads a file here without a new process'
        if shell == "zsh"
        else 'IFS= read -r -d "" state < "$__devmeter_state_file"'
    )
    body = (
        _POSIX_BODY.replace("@STATE_FILE@", _sq(str(s.state_file)))
        .replace("@EXPECTED@", _sq(s.expected))
        .replace("@READ_STATE@", read_state)
    )
    lines.append(body)
    lines.append(_ZSH_CONNECT if shell == "zsh" else _BASH_CONNECT)
    return "\n".join(lines)


def _sq(value: str) -> str:
    """Single-quoted for sh, bash, zsh and fish alike (fish also escapes \\ inside)."""
    return "'" + value.replace("'", "'\\''") + "'"


# --- fish --------------------------------------------------------------------------------


def _fish(s: HookSettings) -> str:
    probe = "the pid must be alive (fish has no socket of\n# its own)"
    lines = [_HEADER.format(shell="fish", probe=probe)]
    if s.bin_dir is not None:
        bin_dir = _fq(str(s.bin_dir))
        lines.append(
            "# devmeter's own command on PATH (where `uv tool install` / pipx put it).\n"
            f"contains -- {bin_dir} $PATH; or set -gx PATH {bin_dir} $PATH\n"
        )
    lines.append("status is-interactive; or exit 0  # only shells a person types in\n")
    lines.append(f"set -g __devmeter_state_file {_fq(str(s.state_file))}")
    lines.append(f"set -g __devmeter_expected {_fq(s.expected)}")
    # Once per shell; a shell started from a routed one takes its routing over (see _posix).
    lines.append("if not set -q __devmeter_loaded")
    lines.append("    set -g __devmeter_loaded 1")
    lines.append('    set -g __devmeter_now "$DEVMETER_ROUTED"')
    lines.append("    set -g __devmeter_said ''")
    lines.append(
        "    # What the user had before devmeter set anything: put back when going direct."
    )
    for name in s.names:
        mine = '"$DEVMETER_ROUTED"' if name in s.url_names else _fq(dict(s.fixed)[name])
        lines.append(
            f'    if set -q {name}; and test "${name}" != {mine}; '
            f"set -g __devmeter_was_{name} ${name}; end"
        )
    lines.append("end")
    lines.append("\nfunction __devmeter_route  # $argv[1]: the proxy URL")
    lines.append("    set -gx DEVMETER_ROUTED $argv[1]")
    for name in s.url_names:
        lines.append(f"    set -gx {name} $argv[1]")
    for name, value in s.fixed:
        lines.append(f"    set -gx {name} {_fq(value)}")
    lines.append("end\n")
    lines.append("function __devmeter_direct  # a value the user changed since is theirs")
    lines.append('    if test "$DEVMETER_ROUTED" = $argv[1]; set -e DEVMETER_ROUTED; end')
    for name in s.names:
        set_to = "$argv[1]" if name in s.url_names else _fq(dict(s.fixed)[name])
        lines.append(
            f'    if set -q {name}; and test "${name}" = {set_to}\n'
            f"        if set -q __devmeter_was_{name}\n"
            f"            set -gx {name} $__devmeter_was_{name}\n"
            "        else\n"
            f"            set -e {name}\n"
            "        end\n"
            "    end"
        )
    lines.append("end")
    lines.append(_FISH_BODY)
    return "\n".join(lines)


_FISH_BODY = r"""
function __devmeter_probe
    test -r $__devmeter_state_file; or return 1
    read -z -l state < $__devmeter_state_file
    set -l port (string match -r '"port"\s*:\s*(\d+)' -- $state)[2]
    set -l pid (string match -r '"pid"\s*:\s*(\d+)' -- $state)[2]
    set -l host (string match -r '"host"\s*:\s*"([^"]+)"' -- $state)[2]
    test -n "$host"; or set host 127.0.0.1
    test -n "$port" -a -n "$pid"; or return 1
    if test -d /proc/self
        test -d /proc/$pid; or return 1
    else
        command kill -0 $pid 2>/dev/null; or return 1
    end
    set -g __devmeter_url "http://$host:$port"
end

function __devmeter_check --on-event fish_prompt
    if __devmeter_probe
        if test "$__devmeter_now" != "$__devmeter_url"
            __devmeter_route $__devmeter_url
            set -g __devmeter_now $__devmeter_url
        end
        if test "$__devmeter_said" = down
            echo "devmeter: the proxy answers at "(string replace 'http://' '' -- $__devmeter_url)"; tools in this shell are metered from now on." >&2
        end
        set -g __devmeter_said up
    else
        if test -n "$__devmeter_now"
            set -g __devmeter_expected "it was at "(string replace 'http://' '' -- $__devmeter_now)
            __devmeter_direct $__devmeter_now
            set -g __devmeter_now ''
        end
        if test "$__devmeter_said" != down
            echo "devmeter: no proxy answers ($__devmeter_expected); tools in this shell go direct, unmetered, until one does. Start it: devmeter" >&2
            set -g __devmeter_said down
        end
    end
end

__devmeter_check
"""


def _fq(value: str) -> str:
    """Single-quoted for fish: backslash and quote are the only escapes inside."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


# --- PowerShell --------------------------------------------------------------------------


def _powershell(s: HookSettings) -> str:
    probe = "the pid must be alive and its port accept a\n# connection (a TcpClient)"
    header = _HEADER.format(shell="PowerShell", probe=probe)
    lines = [header.replace("shell's builtins only: no Python", "shell's own cmdlets: no Python")]
    if s.bin_dir is not None:
        bin_dir = _ps(str(s.bin_dir))
        lines.append(
            "# devmeter's own command on PATH (where `uv tool install` / pipx put it).\n"
            f"if (-not (($env:PATH -split [IO.Path]::PathSeparator) -contains {bin_dir})) {{\n"
            f"    $env:PATH = {bin_dir} + [IO.Path]::PathSeparator + $env:PATH\n"
            "}\n"
        )
    lines.append(f"$global:__devmeterStateFile = {_ps(str(s.state_file))}")
    lines.append(f"$global:__devmeterExpected = {_ps(s.expected)}")
    # PowerShell's hash literals (and Windows' environment) ignore case: HTTPS_PROXY and
    # https_proxy are one name there, and a literal naming both would not even parse.
    url_names = _unique_ignoring_case(s.url_names)
    fixed_names = _unique_ignoring_case(tuple(name for name, _ in s.fixed))
    lines.append(f"$global:__devmeterUrlNames = @({', '.join(_ps(n) for n in url_names)})")
    values = dict(s.fixed)
    fixed = "; ".join(f"{_ps(name)} = {_ps(values[name])}" for name in fixed_names)
    lines.append(f"$global:__devmeterFixed = @{{ {fixed} }}")
    lines.append(_PS_BODY)
    return "\n".join(lines)


_PS_BODY = r"""
if ($null -eq $global:__devmeterSaved) {
    # Once per shell. A shell started from a routed one inherits devmeter's values
    # (DEVMETER_ROUTED names the URL): not the user's; this shell takes the routing over.
    $routed = [Environment]::GetEnvironmentVariable('DEVMETER_ROUTED')
    # What the user had before devmeter set anything: put back when going direct.
    $global:__devmeterSaved = @{}
    foreach ($name in $global:__devmeterUrlNames) {
        $value = [Environment]::GetEnvironmentVariable($name)
        if ($null -ne $value -and $value -ne $routed) { $global:__devmeterSaved[$name] = $value }
    }
    foreach ($name in $global:__devmeterFixed.Keys) {
        $value = [Environment]::GetEnvironmentVariable($name)
        if ($null -ne $value -and $value -ne $global:__devmeterFixed[$name]) { $global:__devmeterSaved[$name] = $value }
    }
    $global:__devmeterNow = if ($routed) { $routed } else { '' }
    $global:__devmeterSaid = ''
}

function global:__devmeterProbe {
    try {
        $state = Get-Content -Raw -LiteralPath $global:__devmeterStateFile -ErrorAction Stop |
            ConvertFrom-Json -ErrorAction Stop
    } catch { return $null }
    if (-not $state.port -or -not $state.pid) { return $null }
    if (-not (Get-Process -Id ([int]$state.pid) -ErrorAction SilentlyContinue)) { return $null }
    $hostName = if ($state.host) { [string]$state.host } else { '127.0.0.1' }
    $client = [System.Net.Sockets.TcpClient]::new()
    try {
        if (-not $client.ConnectAsync($hostName, [int]$state.port).Wait(300)) { return $null }
    } catch { return $null } finally { $client.Dispose() }
    return "http://${hostName}:$($state.port)"
}

function global:__devmeterSet([string]$name, $value) {
    [Environment]::SetEnvironmentVariable($name, $value)
}

function global:__devmeterCheck {
    $url = __devmeterProbe
    if ($url) {
        if ($global:__devmeterNow -ne $url) {
            __devmeterSet 'DEVMETER_ROUTED' $url
            foreach ($name in $global:__devmeterUrlNames) { __devmeterSet $name $url }
            foreach ($name in $global:__devmeterFixed.Keys) { __devmeterSet $name $global:__devmeterFixed[$name] }
            $global:__devmeterNow = $url
        }
        if ($global:__devmeterSaid -eq 'down') {
            [Console]::Error.WriteLine("devmeter: the proxy answers at $($url -replace '^http://', ''); tools in this shell are metered from now on.")
        }
        $global:__devmeterSaid = 'up'
    } else {
        if ($global:__devmeterNow) {
            $global:__devmeterExpected = "it was at $($global:__devmeterNow -replace '^http://', '')"
            # A value the user changed since is theirs.
            $set = @{ 'DEVMETER_ROUTED' = $global:__devmeterNow }
            foreach ($name in $global:__devmeterUrlNames) { $set[$name] = $global:__devmeterNow }
            foreach ($name in $global:__devmeterFixed.Keys) { $set[$name] = $global:__devmeterFixed[$name] }
            foreach ($name in $set.Keys) {
                if ([Environment]::GetEnvironmentVariable($name) -eq $set[$name]) {
                    __devmeterSet $name $global:__devmeterSaved[$name]
                }
            }
            $global:__devmeterNow = ''
        }
        if ($global:__devmeterSaid -ne 'down') {
            [Console]::Error.WriteLine("devmeter: no proxy answers ($global:__devmeterExpected); tools in this shell go direct, unmetered, until one does. Start it: devmeter")
            $global:__devmeterSaid = 'down'
        }
    }
}

if ($null -eq $global:__devmeterPrompt) {
    $global:__devmeterPrompt = $function:prompt
    function global:prompt { __devmeterCheck; & $global:__devmeterPrompt }
}
__devmeterCheck
"""


def _unique_ignoring_case(names: tuple[str, ...]) -> list[str]:
    seen: dict[str, str] = {}
    for name in names:
        seen.setdefault(name.upper(), name)
    return list(seen.values())


def _ps(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
