"""The tray menu as plain data, built from a snapshot of the ledger; pystray at the edge.

`build_menu(snapshot)` is pure and returns `MenuItem`s; `to_pystray(items, handlers)`
turns them into a `pystray.Menu`, calling `handlers[item.action](*item.args)` on a click.

Actions (and their args): `open_dashboard` (session id, or none), `open_findings`,
`set_routing` (mode),
`pause`, `resume`, `allow` (scope, key), `answer_ask` (ask id, "continue" | "stop"),
`open_config`, `quit`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

from devmeter.labels import repo_name, short_session
from devmeter.money import format_usd
from devmeter.quota import QuotaLevel
from devmeter.reports import NO_REPO
from devmeter.tray.icon import State

if TYPE_CHECKING:
    import pystray

log = logging.getLogger(__name__)

RoutingMode = Literal["off", "shadow", "on"]
ROUTING_MODES: tuple[RoutingMode, ...] = ("off", "shadow", "on")
# More rows than this in a submenu are summed into one "N more" row.
MAX_ROWS = 10


@dataclass(frozen=True)
class SessionRow:
    session: str
    tool: str
    repo: str | None
    spend_usd: Decimal


@dataclass(frozen=True)
class CapRow:
    """A cap that is refusing requests now: the menu offers to lift it."""

    scope: str
    key: str
    cap_usd: Decimal


@dataclass(frozen=True)
class AskRow:
    """A request held until the user answers (devmeter/ask.py, from the proxy's asks.json)."""

    id: str
    scope: str
    key: str
    level_usd: Decimal
    until_usd: Decimal
    spent_usd: Decimal
    tool: str | None = None
    repo: str | None = None
    expired: bool = False  # nobody answered in time: the scope's requests are refused
    switch_to: str | None = None  # a cheaper model a routing rule offers


@dataclass(frozen=True)
class TraySnapshot:
    today_usd: Decimal = Decimal(0)
    month_usd: Decimal = Decimal(0)
    sessions: Sequence[SessionRow] = ()  # live ones
    today_by_repo: Sequence[tuple[str | None, Decimal]] = ()  # None: calls with no repo
    routing: RoutingMode = "off"
    paused: bool = False
    blocked: Sequence[CapRow] = ()
    # Sessions stopped (Stop in an ask, `devmeter stop`) whose requests were refused
    # lately: the menu lets each continue, as `devmeter allow ID` does.
    stopped: Sequence[str] = ()
    warning: bool = False  # an alert the developer has not looked at yet
    asks: Sequence[AskRow] = ()  # requests waiting for the user's answer
    notify_problem: str | None = None  # why desktop notifications cannot be shown
    # Who pays (devmeter/billing.py) today, and the tightest quota window ("5h 62% ·
    # resets 14:10"), shown once a subscription is in play.
    today_billed_usd: Decimal = Decimal(0)
    today_covered_usd: Decimal = Decimal(0)
    quota: str | None = None
    # How full that window is against the `[quota] thresholds` (devmeter/quota.py):
    # amber from the lowest, red from the highest.
    quota_level: QuotaLevel = "ok"
    # The config edit the running proxy refused (file, line, key, problem): it keeps
    # its last good config until the file is fixed (devmeter/config_reload.py).
    config_problem: str | None = None
    # Secrets found today in what agents sent (devmeter/secrets): how many, and the
    # latest as `stripe-key sk_l…Zx9Q · acme · warned` (a masked preview, never the value).
    secrets_today: int = 0
    latest_secret: str | None = None

    @property
    def billing_line(self) -> str | None:
        if not self.today_covered_usd and self.quota is None:
            return None  # API keys only: every dollar is billed, the split says nothing
        line = (
            f"billed {format_usd(self.today_billed_usd)} \u00b7 covered "
            f"{format_usd(self.today_covered_usd)}"
        )
        return f"{line} \u00b7 quota {self.quota}" if self.quota else line

    @property
    def state(self) -> State:
        """The icon's state: paused wins (the user chose it), then blocked or a request
        waiting for an answer, then a quota window past its highest alert level
        (critical), then warning (an alert today, a window past its lowest level, or a
        config edit the proxy refused: what is metered is not what the file says)."""
        if self.paused:
            return "paused"
        if self.blocked or self.asks or self.stopped:
            return "blocked"
        if self.quota_level == "critical":
            return "critical"
        if self.warning or self.config_problem or self.quota_level == "warning":
            return "warning"
        return "normal"


@dataclass(frozen=True)
class MenuItem:
    text: str
    action: str | None = None
    args: tuple[str, ...] = ()
    enabled: bool = True
    checked: bool | None = None  # None: not a check item
    radio: bool = False
    submenu: tuple[MenuItem, ...] = ()
    separator: bool = False
    # What a left click on the icon does (GTK; the plain X backend has no menu and opens
    # the dashboard on a click too). At most one item has it.
    default: bool = False


SEPARATOR = MenuItem("", separator=True)


def build_menu(snapshot: TraySnapshot) -> list[MenuItem]:
    items = [
        MenuItem(
            f"Today {format_usd(snapshot.today_usd)} \u00b7 month {format_usd(snapshot.month_usd)}",
            enabled=False,
        )
    ]
    if snapshot.billing_line is not None:
        items.append(MenuItem(f"Today {snapshot.billing_line}", enabled=False))
    if snapshot.paused:
        items.append(MenuItem("Paused: metered requests are refused", enabled=False))
    items += [_ask_item(ask) for ask in snapshot.asks]
    if snapshot.config_problem:
        # A click opens the file to fix; the proxy applies the fix within a second.
        items.append(
            MenuItem(
                f"Config edit not applied: {short_config_problem(snapshot.config_problem)}"[:160],
                "open_config",
            )
        )
    if snapshot.notify_problem:
        items.append(
            MenuItem(f"Notifications are not shown: {snapshot.notify_problem}", enabled=False)
        )
    if snapshot.secrets_today:
        items.append(_secrets_item(snapshot))
    if snapshot.blocked:
        items.append(
            MenuItem(
                f"Blocked by {len(snapshot.blocked)} cap{'s' if len(snapshot.blocked) > 1 else ''}",
                submenu=tuple(_cap_item(cap) for cap in snapshot.blocked),
            )
        )
    items += [
        MenuItem(
            f"Stopped: session {short_session(session)} · let it continue",
            "allow",
            ("session", session),
        )
        for session in snapshot.stopped
    ]
    items += [
        MenuItem("Live sessions", submenu=_sessions(snapshot.sessions)),
        MenuItem("Today by repo", submenu=_repos(snapshot.today_by_repo)),
        MenuItem(
            "Routing",
            submenu=tuple(
                MenuItem(
                    mode.capitalize(),
                    "set_routing",
                    (mode,),
                    checked=mode == snapshot.routing,
                    radio=True,
                )
                for mode in ROUTING_MODES
            ),
        ),
        MenuItem("Resume metered traffic", "resume")
        if snapshot.paused
        else MenuItem("Pause all metered traffic", "pause"),
        SEPARATOR,
        MenuItem("Open dashboard", "open_dashboard", default=True),
        MenuItem("Open config", "open_config"),
        SEPARATOR,
        MenuItem("Quit devmeter", "quit"),
    ]
    return items


# "/home/me/.config/devmeter/config.toml, line 4 [key]: ..." (ConfigError's wording):
# the folder is noise in a menu line or a tooltip; the file name, line and key are not.
_CONFIG_PATH = re.compile(r"^\S*[/\\](?=[^/\\\s]+(?:, line | \[|: ))")


def short_config_problem(problem: str) -> str:
    """A config error with its file's folder left out: `config.toml, line 4 [key]: ...`."""
    return _CONFIG_PATH.sub("", problem, count=1)


def _sessions(rows: Sequence[SessionRow]) -> tuple[MenuItem, ...]:
    if not rows:
        return (MenuItem("No live sessions", enabled=False),)
    ranked = sorted(rows, key=lambda r: r.spend_usd, reverse=True)
    items = [
        MenuItem(
            f"{format_usd(r.spend_usd)}  {r.tool} \u00b7 "
            f"{repo_name(r.repo) if r.repo else NO_REPO} \u00b7 {short_session(r.session)}",
            "open_dashboard",
            (r.session,),
        )
        for r in ranked[:MAX_ROWS]
    ]
    return tuple(items + _more(ranked[MAX_ROWS:], lambda r: r.spend_usd, "sessions"))


def _repos(rows: Sequence[tuple[str | None, Decimal]]) -> tuple[MenuItem, ...]:
    if not rows:
        return (MenuItem("Nothing spent today", enabled=False),)
    ranked = sorted(rows, key=lambda r: r[1], reverse=True)
    items = [
        MenuItem(f"{format_usd(usd)}  {repo_name(repo) if repo else NO_REPO}", enabled=False)
        for repo, usd in ranked[:MAX_ROWS]
    ]
    return tuple(items + _more(ranked[MAX_ROWS:], lambda r: r[1], "repos"))


def _more(rest: Sequence[Any], usd: Callable[[Any], Decimal], what: str) -> list[MenuItem]:
    if not rest:
        return []
    total = sum((usd(r) for r in rest), Decimal(0))
    return [MenuItem(f"{format_usd(total)}  {len(rest)} more {what}", enabled=False)]


def _ask_item(ask: AskRow) -> MenuItem:
    """An ask's question and its answers; the same as the notification's buttons."""
    from devmeter.ask import STOP_LABELS

    what = {
        "session": f"session {short_session(ask.key)}",
        "repo": f"repo {repo_name(ask.key)}",
    }.get(ask.scope, ask.key)
    where = " \u00b7 ".join(x for x in (ask.tool, repo_name(ask.repo) if ask.repo else None) if x)
    state = "Refused until you answer" if ask.expired else "Waiting for you"
    answers = [
        MenuItem(f"Continue up to {format_usd(ask.until_usd)}", "answer_ask", (ask.id, "continue"))
    ]
    if ask.switch_to:
        answers.append(MenuItem(f"Switch to {ask.switch_to}", "answer_ask", (ask.id, "switch")))
    answers.append(MenuItem(STOP_LABELS.get(ask.scope, "Stop"), "answer_ask", (ask.id, "stop")))
    return MenuItem(
        f"{state}: {what} passed {format_usd(ask.level_usd)}" + (f" ({where})" if where else ""),
        submenu=tuple(answers),
    )


def _secrets_item(snapshot: TraySnapshot) -> MenuItem:
    """Today's count and the latest finding; a click opens the dashboard's findings page."""
    n = snapshot.secrets_today
    text = f"{n} secret{'s' if n > 1 else ''} in requests today"
    if snapshot.latest_secret:
        text += f" \u00b7 latest: {snapshot.latest_secret}"
    return MenuItem(text[:160], "open_findings")


def _cap_item(cap: CapRow) -> MenuItem:
    what = {
        "session": f"session {short_session(cap.key)}",
        "repo": f"repo {repo_name(cap.key)}",
    }.get(cap.scope, cap.key)
    return MenuItem(
        f"Lift the {format_usd(cap.cap_usd)} cap on {what}",
        "allow",
        (cap.scope, cap.key),
    )


# --- pystray -------------------------------------------------------------------------------


def to_pystray(
    items: Sequence[MenuItem], handlers: dict[str, Callable[..., object]]
) -> pystray.Menu:
    """A pystray.Menu for `items`; a click calls `handlers[action](*args)`.

    An action without a handler is shown disabled (and logged) rather than crashing the
    tray the first time a rare item appears.
    """
    import pystray  # here: importing it picks a display backend

    def convert(item: MenuItem) -> pystray.MenuItem | Any:
        if item.separator:
            return pystray.Menu.SEPARATOR
        if item.submenu:
            return pystray.MenuItem(item.text, pystray.Menu(*map(convert, item.submenu)))
        handler = handlers.get(item.action) if item.action else None
        if item.action and handler is None:
            log.warning("tray menu: no handler for action %r (%s)", item.action, item.text)
        checked = None if item.checked is None else (lambda _i, v=item.checked: v)
        return pystray.MenuItem(
            item.text,
            _click(handler, item.args) if handler else None,
            checked=checked,
            radio=item.radio,
            default=item.default,
            enabled=item.enabled and (item.action is None or handler is not None),
        )

    return pystray.Menu(*map(convert, items))


def _click(handler: Callable[..., object], args: tuple[str, ...]) -> Callable[[Any, Any], None]:
    def on_click(_icon: Any, _item: Any) -> None:
        handler(*args)

    return on_click
