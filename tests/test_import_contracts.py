"""The layer contracts in pyproject.toml hold, and `lint-imports` fails when one is broken."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

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
    # A base module reaching up to the budgets: the base must import nothing of ours.
    alerts = tmp_path / "devmeter" / "alerts.py"
    alerts.write_text(alerts.read_text() + "\nfrom devmeter import budget  # noqa: E402\n")
    broken = lint_imports(tmp_path)
    assert broken.returncode != 0
    assert "Base modules import nothing of the project BROKEN" in broken.stdout
    assert "devmeter.alerts -> devmeter.budget" in broken.stdout
    assert "Wire formats (providers/) are pure parsing" in broken.stdout
    assert "BROKEN" in broken.stdout
    assert "devmeter.providers.request -> devmeter.ledger" in broken.stdout


def _contract(name: str) -> dict[str, Any]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts = config["tool"]["importlinter"]["contracts"]
    return next(c for c in contracts if c["name"] == name)


def test_the_base_layer_is_forbidden_every_other_module_of_the_project() -> None:
    # A forbidden contract only forbids what it lists: a new module that nobody added to
    # the list would be importable from the base unnoticed.
    base = _contract("Base modules import nothing of the project")
    top_level = {
        f"devmeter.{p.stem}"
        for p in (ROOT / "devmeter").iterdir()
        if not p.name.startswith("__") and (p.suffix == ".py" or (p / "__init__.py").exists())
    }
    assert set(base["source_modules"]) <= top_level
    unlisted = top_level - set(base["source_modules"]) - set(base["forbidden_modules"])
    assert not unlisted, f"add these to the base contract's forbidden_modules: {unlisted}"
