"""The layer contracts in pyproject.toml hold, and `lint-imports` fails when one is broken."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(project: Path) -> subprocess.CompletedProcess[str]:
    # The copy first on the path, so grimp reads its modules, not the installed package's.
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(project / "pyproject.toml"), "--no-cache"],
        cwd=project,
        env={"PYTHONPATH": str(project), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_layer_violation_fails_the_check_and_names_the_contract(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "devmeter", tmp_path / "devmeter",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    kept = lint_imports(tmp_path)
    assert kept.returncode == 0, kept.stdout + kept.stderr

    # A wire-format module reaching for the ledger: providers/ must stay pure parsing.
    request = tmp_path / "devmeter" / "providers" / "request.py"
    request.write_text(request.read_text() + "\nfrom devmeter import ledger  # noqa: E402\n")
    broken = lint_imports(tmp_path)
    assert broken.returncode != 0
    assert "Wire formats (providers/) are pure parsing" in broken.stdout
    assert "BROKEN" in broken.stdout
    assert "devmeter.providers.request -> devmeter.ledger" in broken.stdout
