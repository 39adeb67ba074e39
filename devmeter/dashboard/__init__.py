"""`devmeter dashboard`: the ledger as a local web page with charts.

`charts` draws SVG (pure functions), `pages` renders HTML and the JSON the page polls
from the same query layer as `devmeter report` (devmeter/reports.py, devmeter/sessions.py),
and `server` is the thin loopback HTTP adapter with its checks (Host, token, Origin).
"""
