# Start the devmeter tray at logon, without a console window.
#
#   powershell -ExecutionPolicy Bypass -File packaging\windows\install-startup.ps1
#   powershell -ExecutionPolicy Bypass -File packaging\windows\install-startup.ps1 -TaskScheduler
#
# Default: a shortcut in your Startup folder (shell:startup). -TaskScheduler: a logon task
# instead, which also restarts devmeter if it crashes. Either runs `pythonw -m devmeter`
# with the Python devmeter is installed in (pythonw: no console window behind the tray).
# `devmeter setup` runs this with -Devmeter, the installed devmeter.exe, which need not be
# on PATH yet.
param([switch]$TaskScheduler, [string]$Python = "", [string]$Devmeter = "")

$ErrorActionPreference = "Stop"
if (-not $Python) {
    $devmeter = if ($Devmeter) { $Devmeter } else { (Get-Command devmeter -ErrorAction Stop).Source }
    # pipx / uv tool: devmeter.exe sits in the venv's Scripts folder, beside pythonw.exe;
    # a plain pip install puts it in Python's Scripts folder, one level below pythonw.exe.
    $scripts = Split-Path $devmeter
    $candidates = @((Join-Path $scripts "pythonw.exe"), (Join-Path (Split-Path $scripts) "pythonw.exe"))
    $Python = $candidates | Where-Object { Test-Path $_ } | Select-Object -First 1
    if (-not $Python) { throw "pythonw.exe not found near $devmeter; pass -Python C:\path\to\pythonw.exe" }
}

if ($TaskScheduler) {
    $action = New-ScheduledTaskAction -Execute $Python -Argument "-m devmeter"
    $trigger = New-ScheduledTaskTrigger -AtLogOn -User $env:USERNAME
    $settings = New-ScheduledTaskSettingsSet -RestartCount 3 -RestartInterval (New-TimeSpan -Minutes 1) `
        -ExecutionTimeLimit ([TimeSpan]::Zero) -AllowStartIfOnBatteries -DontStopIfGoingOnBatteries
    Register-ScheduledTask -TaskName "devmeter" -Action $action -Trigger $trigger -Settings $settings `
        -Description "devmeter: LLM API spend in the tray" -Force | Out-Null
    Write-Host "Registered the logon task 'devmeter' ($Python -m devmeter)."
    Write-Host "Remove it with: Unregister-ScheduledTask -TaskName devmeter"
} else {
    $startup = [Environment]::GetFolderPath("Startup")
    $link = Join-Path $startup "devmeter.lnk"
    $shell = New-Object -ComObject WScript.Shell
    $shortcut = $shell.CreateShortcut($link)
    $shortcut.TargetPath = $Python
    $shortcut.Arguments = "-m devmeter"
    $shortcut.Description = "devmeter: LLM API spend in the tray"
    $shortcut.WindowStyle = 7  # minimised
    $shortcut.Save()
    Write-Host "Created $link ($Python -m devmeter). Delete it to stop starting devmeter at logon."
}
