"""devmeter's CA, kept private, and the trust bundles that let clients accept it.

Clients that take one bundle (Python's SSL_CERT_FILE, requests, curl, Codex) get the
system roots plus devmeter's CA, so trust in every other host stays as it was.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import certifi

from devmeter.paths import Paths

# Files in mitmproxy's confdir that hold the CA's private key.
PRIVATE_FILES = ("mitmproxy-ca.pem", "mitmproxy-ca.p12")


def secure_ca_files(ca_dir: Path) -> None:
    """Only the user may read the CA's private key: anyone holding it can forge any site."""
    os.chmod(ca_dir, 0o700)
    for name in PRIVATE_FILES:
        path = ca_dir / name
        if path.exists():
            os.chmod(path, 0o600)


def system_roots() -> Path:
    """The platform's root bundle, else certifi's."""
    default = ssl.get_default_verify_paths().cafile
    if default and Path(default).is_file():
        return Path(default)
    for candidate in ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"):
        if Path(candidate).is_file():
            return Path(candidate)
    return Path(certifi.where())


def write_bundle(paths: Paths) -> Path:
    roots = system_roots().read_text(encoding="utf-8", errors="replace")
    ca = paths.ca_cert.read_text(encoding="utf-8")
    bundle = roots.rstrip("\n") + "\n\n# devmeter local proxy CA\n" + ca
    tmp = paths.ca_bundle.with_suffix(".tmp")
    tmp.write_text(bundle, encoding="utf-8")
    tmp.replace(paths.ca_bundle)
    return paths.ca_bundle
