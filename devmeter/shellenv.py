"""The environment that makes every supported client use the proxy and trust its CA."""

from __future__ import annotations

from devmeter.paths import Paths

SHELLS = ("bash", "zsh", "fish", "powershell")


def proxy_environment(paths: Paths, host: str, port: int) -> dict[str, str]:
    url = f"http://{host}:{port}"
    bundle = str(paths.ca_bundle)
    return {
        "HTTPS_PROXY": url,
        "https_proxy": url,
        # Local servers stay direct, so a tool's own localhost traffic is not proxied.
        "NO_PROXY": "localhost,127.0.0.1,::1",
        "no_proxy": "localhost,127.0.0.1,::1",
        # Node adds this CA to its built-in roots (Claude Code, Gemini CLI, Node SDKs).
        "NODE_EXTRA_CA_CERTS": str(paths.ca_cert),
        # These replace the roots, so they get the system roots plus devmeter's CA.
        "SSL_CERT_FILE": bundle,
        "REQUESTS_CA_BUNDLE": bundle,
        "CURL_CA_BUNDLE": bundle,
        "CODEX_CA_CERTIFICATE": bundle,
        "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": bundle,
    }


def render(env: dict[str, str], shell: str) -> str:
    if shell not in SHELLS:
        raise ValueError(f"unknown shell {shell!r}; choose one of {', '.join(SHELLS)}")
    lines = []
    for name, value in env.items():
        if shell == "fish":
            lines.append(f"set -gx {name} {_quote_posix(value)};")
        elif shell == "powershell":
            lines.append(f"$env:{name} = '{value.replace(chr(39), chr(39) * 2)}'")
        else:
            lines.append(f"export {name}={_quote_posix(value)}")
    return "\n".join(lines) + "\n"


def render_unset(names: list[str], shell: str) -> str:
    """The commands that remove `names` from `shell`'s environment: `devmeter env --unset`,
    the way back from `eval "$(devmeter env)"` once the proxy is gone."""
    if shell not in SHELLS:
        raise ValueError(f"unknown shell {shell!r}; choose one of {', '.join(SHELLS)}")
    if shell == "fish":
        return "".join(f"set -e {name};\n" for name in names)
    if shell == "powershell":
        return "".join(f"Remove-Item Env:{name} -ErrorAction SilentlyContinue\n" for name in names)
    return f"unset {' '.join(names)}\n"


def _quote_posix(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"
