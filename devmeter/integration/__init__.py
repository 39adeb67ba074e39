"""Putting devmeter into a user's daily environment, and taking it out again.

`devmeter setup` writes a shell hook per shell (`shellhook`), adds one block that sources
it to each shell's startup file (`rcblock`), and installs a start-at-login entry made
from packaging/ for this install's paths (`autostart`). Every change is recorded in a
manifest (`manifest`) so that `devmeter uninstall` (`steps`) can undo exactly those
changes and nothing else.
"""
