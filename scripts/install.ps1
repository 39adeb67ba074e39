# Installs devmeter from this checkout onto PATH on Windows, sets it up, and runs it:
#
#   powershell -ExecutionPolicy Bypass -File scripts\install.ps1
#   powershell -ExecutionPolicy Bypass -File scripts\install.ps1 -NoSetup -NoRun
#
# The same steps as scripts/install.sh: uv if missing (from PyPI, with pip), then
# `uv tool install` of this checkout (a Python >= 3.12 when the py launcher knows one,
# else 3.11 with scripts/uv-overrides.txt), then `devmeter setup` (the PowerShell profile
# hook and a Startup-folder shortcut; `devmeter uninstall` undoes both), then `devmeter`.
# Not run by the test suite (it runs on Linux); the steps it calls are.
param([switch]$NoSetup, [switch]$NoRun, [string]$Python = "")

$ErrorActionPreference = "Stop"
$here = Split-Path -Parent $PSScriptRoot

function Say([string]$text) { Write-Host ""; Write-Host "== $text" }

$uv = Get-Command uv -ErrorAction SilentlyContinue
if (-not $uv) {
    Say "installing uv (it installs devmeter with the right mitmproxy for your Python)"
    $py = Get-Command py -ErrorAction SilentlyContinue
    if ($py) { & py -3 -m pip install --quiet --user uv } else { & python -m pip install --quiet --user uv }
    if ($LASTEXITCODE -ne 0) { throw "could not install uv with pip; see https://docs.astral.sh/uv/ and run this again" }
    $userBase = if ($py) { & py -3 -m site --user-base } else { & python -m site --user-base }
    $pyVersion = if ($py) { & py -3 -c "import sys; print(f'Python{sys.version_info[0]}{sys.version_info[1]}')" } else { & python -c "import sys; print(f'Python{sys.version_info[0]}{sys.version_info[1]}')" }
    foreach ($dir in @((Join-Path $userBase "Scripts"), (Join-Path (Join-Path $userBase $pyVersion) "Scripts"))) {
        if (Test-Path (Join-Path $dir "uv.exe")) { $env:PATH = "$dir;$env:PATH" }
    }
    $uv = Get-Command uv -ErrorAction Stop
}
$uv = $uv.Source

if (-not $Python) {
    # The py launcher lists installed Pythons; prefer the newest >= 3.12 (mitmproxy 12).
    $Python = "3.11"
    if (Get-Command py -ErrorAction SilentlyContinue) {
        foreach ($minor in 14, 13, 12) {
            & py "-3.$minor" -c "import sys" 2>$null
            if ($LASTEXITCODE -eq 0) { $Python = "3.$minor"; break }
        }
    }
}

Say "installing devmeter with Python $Python ($(& $uv --version))"
& $uv tool install --force --reinstall --python $Python --overrides (Join-Path $here "scripts\uv-overrides.txt") $here
if ($LASTEXITCODE -ne 0) { throw "uv tool install failed (see above)" }

$bin = (& $uv tool dir --bin).Trim()
$devmeter = Join-Path $bin "devmeter.exe"
& $devmeter --version

if (-not $NoSetup) {
    Say "devmeter setup (undo: devmeter uninstall)"
    & $devmeter setup
}

if (-not (($env:PATH -split ";") -contains $bin)) {
    Write-Host "(devmeter is in $bin: new PowerShell windows have it on PATH; in this one: `$env:PATH = `"$bin;`$env:PATH`")"
    & $uv tool update-shell | Out-Null  # adds uv's bin folder to the user's PATH for cmd.exe too
}

if (-not $NoRun) {
    Say "starting devmeter (Quit from its tray menu; with setup it also starts at logon)"
    & $devmeter
}
