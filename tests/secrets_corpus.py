"""Planted secrets inside realistic agent traffic, and look-alikes that must not fire.

The secrets are made at import from a seeded generator: nothing here is a real key, and
no key-shaped literal sits in the repository for other scanners to trip on. Each planted
value is kept in PLANTED so tests can grep the ledger, data dir and proxy output for it.
"""

from __future__ import annotations

import base64
import json
import random
import string

_rng = random.Random(21)
_ALNUM = string.ascii_letters + string.digits


def _pick(chars: str, n: int) -> str:
    return "".join(_rng.choice(chars) for _ in range(n))


def _b64url(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


_UPPER = string.ascii_uppercase + string.digits
_PEM_BODY = "\n".join(_pick(string.ascii_letters + string.digits + "+/", 64) for _ in range(8))
_PEM_JSON_BODY = "\\n".join(
    _pick(string.ascii_letters + string.digits + "+/", 64) for _ in range(8)
)

# kind -> the secret value a detector must report (the exact text that gets redacted).
PLANTED: dict[str, str] = {
    "aws-access-key": "AKIA" + _pick(_UPPER, 16),
    "gcp-service-account": _pick("0123456789abcdef", 40),
    "azure-storage-key": _pick(_ALNUM + "+/", 86) + "==",
    "github-token": "ghp_" + _pick(_ALNUM, 36),
    "gitlab-token": "glpat-" + _pick(_ALNUM, 20),
    "slack-token": f"xoxb-{_pick(string.digits, 12)}-{_pick(string.digits, 13)}"
    f"-{_pick(_ALNUM, 24)}",
    "stripe-key": "sk_live_" + _pick(_ALNUM, 24),
    "npm-token": "npm_" + _pick(_ALNUM, 36),
    "pypi-token": "pypi-AgEIcHlwaS5vcmc" + _pick(_ALNUM, 80),
    "anthropic-api-key": "sk-ant-api03-" + _pick(_ALNUM + "-_", 93) + "AA",
    "openai-api-key": "sk-proj-" + _pick(_ALNUM, 40) + "T3BlbkFJ" + _pick(_ALNUM, 40),
    "google-api-key": "AIza" + _pick(_ALNUM + "-_", 35),
    "private-key": "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    f"{_PEM_BODY}\n-----END OPENSSH PRIVATE KEY-----",
    "jwt": ".".join(
        [
            _b64url({"alg": "HS256", "typ": "JWT"}),
            _b64url({"sub": _pick(string.digits, 8), "iat": 1765000000}),
            _pick(_ALNUM + "-_", 43),
        ]
    ),
    "database-password": _pick(_ALNUM, 18),
    "dotenv-secret": _pick(_ALNUM, 40),
}
# A second private key, escaped inside the service-account JSON.
GCP_PRIVATE_KEY = f"-----BEGIN PRIVATE KEY-----\\n{_PEM_JSON_BODY}\\n-----END PRIVATE KEY-----\\n"

GCP_SERVICE_ACCOUNT = (
    "{\n"
    '  "type": "service_account",\n'
    '  "project_id": "acme-prod-4471",\n'
    f'  "private_key_id": "{PLANTED["gcp-service-account"]}",\n'
    f'  "private_key": "{GCP_PRIVATE_KEY}",\n'
    '  "client_email": "deployer@acme-prod-4471.iam.gserviceaccount.com",\n'
    '  "client_id": "104729561837465019283"\n'
    "}\n"
)

# The text each planted secret sits in, as an agent would read it from a file.
CONTEXT: dict[str, str] = {
    "aws-access-key": "[default]\n"
    f"aws_access_key_id = {PLANTED['aws-access-key']}\nregion = eu-west-1\n",
    "gcp-service-account": GCP_SERVICE_ACCOUNT,
    "azure-storage-key": "AZURE_STORAGE_CONNECTION_STRING=DefaultEndpointsProtocol=https;"
    f"AccountName=acmeprod;AccountKey={PLANTED['azure-storage-key']};EndpointSuffix=core.windows.net\n",
    "github-token": f"git remote set-url origin https://x-access-token:{PLANTED['github-token']}@github.com/acme/api\n",
    "gitlab-token": f'const client = new Gitlab({{ token: "{PLANTED["gitlab-token"]}" }});\n',
    "slack-token": f"slack:\n  bot_token: {PLANTED['slack-token']}\n  channel: '#deploys'\n",
    "stripe-key": f"STRIPE_KEY={PLANTED['stripe-key']}\n",
    "npm-token": f"//registry.npmjs.org/:_authToken={PLANTED['npm-token']}\n",
    "pypi-token": f"[pypi]\n  username = __token__\n  password = {PLANTED['pypi-token']}\n",
    "anthropic-api-key": f'client = Anthropic(api_key="{PLANTED["anthropic-api-key"]}")\n',
    "openai-api-key": f"OPENAI_KEY={PLANTED['openai-api-key']}\n",
    "google-api-key": f"const GEMINI = '{PLANTED['google-api-key']}';\n",
    "private-key": PLANTED["private-key"] + "\n",
    "jwt": f"curl -H 'Authorization: Bearer {PLANTED['jwt']}' https://api.acme.dev/me\n",
    "database-password": f"DATABASE_URL=postgres://app:{PLANTED['database-password']}@db.internal:5432/acme\n",
    "dotenv-secret": f"SESSION_SECRET={PLANTED['dotenv-secret']}\nDEBUG=false\nPORT=3000\n",
}

# More samples, so that every detector (not only every kind) is shown finding something:
# rule-specific shapes a kind's first detector would otherwise claim or never see.
# name -> (kind, secret, the text it sits in).
_LEGACY_OPENAI = "sk-" + _pick(_ALNUM, 20) + "T3BlbkFJ" + _pick(_ALNUM, 20)
_SERVICE_BUS = _pick(_ALNUM + "+/", 43) + "="
_RSA_BODY = "\n".join(_pick(string.ascii_letters + string.digits + "+/", 64) for _ in range(6))
_RSA = f"-----BEGIN RSA PRIVATE KEY-----\n{_RSA_BODY}\n-----END RSA PRIVATE KEY-----"
VARIANTS: dict[str, tuple[str, str, str]] = {
    "openai-legacy-key": (
        "openai-api-key",
        _LEGACY_OPENAI,
        f"openai.api_key = '{_LEGACY_OPENAI}'\n",
    ),
    "azure-service-bus": (
        "azure-connection-secret",
        _SERVICE_BUS,
        "Endpoint=sb://acme.servicebus.windows.net/;SharedAccessKeyName=send;"
        f"SharedAccessKey={_SERVICE_BUS}\n",
    ),
    "rsa-pem": ("private-key", _RSA, f"$ cat deploy/id_rsa\n{_RSA}\n"),
    # Its newlines escaped (`\\n`); the span ends with the END line, as redaction cuts it.
    "gcp-private-key-in-json": (
        "private-key",
        GCP_PRIVATE_KEY.removesuffix("\\n"),
        GCP_SERVICE_ACCOUNT,
    ),
}
PLANTED_ALL: tuple[str, ...] = (*PLANTED.values(), *(v[1] for v in VARIANTS.values()))

# A Claude Code `.env` read: several secrets in one tool result, line-numbered as its
# Read tool returns them.
DOTENV_FILE = "".join(
    CONTEXT[k] for k in ("stripe-key", "openai-api-key", "database-password", "dotenv-secret")
)


def numbered(text: str) -> str:
    return "".join(f"{i:>6}\u2192{line}\n" for i, line in enumerate(text.splitlines(), 1))


_PNG = base64.b64encode(bytes(_rng.getrandbits(8) for _ in range(3000))).decode()

# Text that looks like a secret to a careless detector and is not one.
LOOKALIKES: dict[str, str] = {
    "uuid": "request_id=3f1c9a52-7b8e-4d21-9c4a-0e6f2b7d8a19"
    " session 01a20804-def5-7ef0-b12b-5c32930f1fa8\n",
    "git-hash": "commit 9f2c4e7a1b3d5f60718293a4b5c6d7e8f9012345\nAuthor: Dev <dev@acme.dev>\n",
    "sha256": "sha256:4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b"
    "  dist.tar.gz\n",
    "base64-image": '{"type": "image", "source": {"type": "base64", "media_type": "image/png",'
    f' "data": "{_PNG}"}}}}',
    "npm-lock-integrity": '"integrity": "sha512-'
    + base64.b64encode(bytes(_rng.getrandbits(8) for _ in range(64))).decode()
    + '",\n',
    "yarn-lock": 'resolved "https://registry.yarnpkg.com/lodash/-/lodash-4.17.21.tgz#'
    '679591c564c3bffaae8454cf0b3df370c3d6911c"\n',
    "aws-docs-example": "aws_access_key_id = AKIAIOSFODNN7EXAMPLE\n"
    "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n",
    "stripe-test-key": "STRIPE_KEY=sk_test_" + "4eC39HqLyjWDarjtT1zdp7dc" + "\n",
    "env-example": "OPENAI_API_KEY=your-api-key-here\nDATABASE_URL=postgres://user:password@localhost:5432/app\n",
    "code": "token = self.refresh_token_cache\napi_key = os.environ['API_KEY']\n",
    "public-key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    " dev@laptop\n",
}
