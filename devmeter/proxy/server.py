"""`devmeter proxy`: mitmproxy with the Meter addon, on loopback, intercepting LLM hosts only."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import gc
import json
import logging
import os
import re
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mitmproxy import connection, http, options
from mitmproxy.tools.dump import DumpMaster

from devmeter import cabundle, export, ports, pricing
from devmeter import control as control_state
from devmeter.alerts import Alert
from devmeter.ask import AskBook, asks_path, write_pending
from devmeter.attribution import Attributor
from devmeter.billing import Accounts, Billing
from devmeter.budget import SCOPES, Budgets
from devmeter.config import Config
from devmeter.config_reload import ConfigReloader, clear_status, load_with_pins
from devmeter.control import ControlWatcher, control_path
from devmeter.diagnostics import log_to_stderr
from devmeter.guard import (
    AlertDispatcher,
    Guard,
    print_alert,
    spend_so_far,
)
from devmeter.ledger import LedgerWriter, connect_readonly
from devmeter.paths import Paths, read_loop_key, write_private
from devmeter.providers import INTERCEPT_HOSTS
from devmeter.providers.quota_headers import QuotaReading
from devmeter.proxy import deadlines
from devmeter.proxy.meter import Meter
from devmeter.push import Pusher
from devmeter.quota_watch import QuotaWatch
from devmeter.routing.session_router import Router
from devmeter.secrets.inspector import SecretInspector, load_salt, seen_in_ledger
from devmeter.secrets.scan import builtin_detectors
from devmeter.spool import SpoolBusy
from devmeter.usage import Attribution, Call, RequestInfo
from devmeter.warnlog import route_warnings

if TYPE_CHECKING:
    from devmeter.alert_delivery import Notifier

log = logging.getLogger(__name__)

# How often control.json is looked at with no request in flight (ControlWatcher re-reads
# it at most twice a second, and only when its mtime moved: a stat).
ANSWER_POLL_SECONDS = 0.5


def allow_hosts_patterns(extra_hosts: tuple[str, ...] = ()) -> list[str]:
    """Anchored regexes for mitmproxy's allow_hosts: everything else is tunnelled untouched."""
    hosts = sorted({*INTERCEPT_HOSTS, *extra_hosts})
    alternation = "|".join(re.escape(h) for h in hosts)
    return [rf"^({alternation})(:\d+)?$"]


def make_attribute(
    attributor: Attributor,
) -> Callable[[http.HTTPFlow, RequestInfo, Mapping[str, str], str, float], Attribution]:
    def attribute(
        flow: http.HTTPFlow, info: RequestInfo, headers: Mapping[str, str], host: str, now: float
    ) -> Attribution:
        return attributor.attribute(
            headers,
            info.facts,
            _address(flow.client_conn.peername),
            now,
            host=host,
            sockname=_address(flow.client_conn.sockname),
        )

    return attribute


class ClientProcessLookup:
    """Finds the process behind a client connection, once per connection (for the Meter,
    which calls these two hooks).

    A client seen recently (nearly every new connection) is found right away on Linux,
    in a millisecond or two; any other lookup, a scan of every process (or psutil
    elsewhere), runs in a worker thread on the connection's first intercepted request.
    The Meter then reads the answer from the Attributor's cache. Only intercepted hosts
    reach HTTP hooks, so tunnelled traffic costs nothing.
    """

    def __init__(self, attributor: Attributor) -> None:
        self._attributor = attributor
        self._seen: set[tuple[str, int]] = set()
        # One lookup at a time: each one's many small syscalls hand the GIL back and forth
        # with the event loop, and several threads doing it at once (16 clients connecting
        # together) cost the loop far more than they save.
        self._lookups = concurrent.futures.ThreadPoolExecutor(1, "devmeter-lookup")

    def requestheaders(self, flow: http.HTTPFlow) -> Coroutine[None, None, None] | None:
        # Sync, returning a coroutine only for a new connection: mitmproxy awaits what a
        # hook returns, and a keep-alive connection's later requests then cost nothing.
        peer = _address(flow.client_conn.peername)
        if peer is None or peer in self._seen:
            return None
        self._seen.add(peer)
        sockname = _address(flow.client_conn.sockname)
        if self._attributor.process_quickly(peer, time.time(), sockname):
            return None  # a recent client, found right here
        return self._look_up(peer, sockname)

    async def _look_up(self, peer: tuple[str, int], sockname: tuple[str, int] | None) -> None:
        loop = asyncio.get_running_loop()
        lookup = functools.partial(self._attributor.process_for, peer, time.time(), sockname)
        try:
            await loop.run_in_executor(self._lookups, lookup)
        except Exception as exc:  # attribution is best effort; the call goes on
            log.warning("devmeter: client process lookup failed: %r", exc)

    def client_disconnected(self, client: connection.Client) -> None:
        peer = _address(client.peername)
        if peer is not None and peer in self._seen:
            self._seen.discard(peer)
            self._attributor.forget(peer)


def _address(address: object) -> tuple[str, int] | None:
    if isinstance(address, tuple) and len(address) >= 2:
        return str(address[0]), int(address[1])
    return None


async def serve(
    config: Config,
    paths: Paths,
    pinned_upstreams: Mapping[str, str] | None = None,
    pinned_listen: tuple[str, int] | None = None,
) -> None:
    """Run the proxy until stopped. `pinned_upstreams`: `--upstream` flags, which a
    config reload keeps over the file's [upstream] table; `pinned_listen`: `--listen`,
    likewise over its [proxy] listen."""
    host, port = config.listen
    _check_listen(
        host, port, paths.config_file
    )  # before anything slow: a taken port is the likeliest failure
    paths.ca_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(paths.ca_dir, 0o700)
    # Where alerts go beyond the ledger: printed, then the desktop and [notify] push, once
    # made below (after the ledger: a second proxy on it stops there, touching nothing).
    outlets: list[Callable[[Alert], None]] = []

    def notify(alert: Alert) -> None:
        print_alert(alert)
        for send in outlets:
            send(alert)

    pending = asks_path(paths.data_dir)

    # Once made below: closes the popups of asks answered meanwhile, off the event loop.
    withdraw_answered: list[Callable[[set[str]], None]] = []

    def on_asks_changed(open_asks: list[dict[str, Any]]) -> None:
        write_pending(pending, open_asks)  # for the tray menu; rare and tiny
        for withdraw in withdraw_answered:
            withdraw({str(row["id"]) for row in open_asks})

    # A set, not a frozenset: a config reload can add an [upstream] host.
    intercepted = {h.lower() for h in (*INTERCEPT_HOSTS, *config.upstreams)}
    deadline = deadlines.HeaderDeadline(intercepted.__contains__)
    built = build_meter(
        config, paths, proxy_port=port or None, notify=notify, deadline=deadline,
        on_asks_changed=on_asks_changed,
    )  # fmt: skip
    notifier = _notifier(paths, control_path(paths.data_dir))
    dispatcher = AlertDispatcher(notifier.notify, notifier.flush)
    withdraw_answered.append(lambda ids: dispatcher.call(lambda: notifier.withdraw_except(ids)))
    pusher = _pusher(config)
    outlets.append(dispatcher.send)
    if pusher is not None:
        outlets.append(pusher.send)
    pending.unlink(missing_ok=True)  # a killed proxy's held requests died with it
    meter, writer, guard, router = built.meter, built.writer, built.guard, built.router
    asks, quota_watch, secrets = built.asks, built.quota_watch, built.secrets
    deadlines.raise_file_limit()
    master = DumpMaster(options.Options(), with_termlog=False, with_dumper=False)
    # Addon options exist only once DumpMaster has loaded its addons.
    master.options.update(
        listen_host=host,
        listen_port=port,
        confdir=str(paths.ca_dir),
        allow_hosts=allow_hosts_patterns(tuple(config.upstreams)),
        connection_strategy="lazy",
        # Not stream_large_bodies: it costs every call two of mitmproxy's body-size checks;
        # the Meter streams what is large or of unknown length itself.
    )
    if "tcp_timeout" in master.options:  # mitmproxy 12; 11 has the same 600 s, fixed
        master.options.update(tcp_timeout=deadlines.IDLE_TIMEOUT)
    master.addons.add(meter)

    def load_config() -> tuple[Config, dict[tuple[str, str], Decimal]]:
        new = load_with_pins(paths.config_file, pinned_upstreams or {}, pinned_listen)
        _warm_detectors(new)  # here, in the worker thread: not on the first request
        # Past spend for the scopes this config starts to watch, read here in the worker
        # thread; the scopes already watched keep the proxy's own (later) figures.
        new_budgets: Budgets = new.section("budgets")
        if _unseeded(guard.budgets.budgets, new_budgets):
            return new, _ledger_spend(paths, new_budgets)
        return new, {}

    def apply_config(old: Config, new: Config, spend: dict[tuple[str, str], Decimal]) -> list[str]:
        """Swap in a whole, validated config, on the event loop (between requests)."""
        budgets: Budgets = new.section("budgets")
        fresh = _unseeded(guard.budgets.budgets, budgets)
        seed = {key: usd for key, usd in spend.items() if key[0] in fresh}
        guard.reconfigure(budgets, new.section("runaway"), seed)
        asks.budgets = budgets  # new ask levels and timeout from the next request on
        quota_watch.reconfigure(new.section("quota"))  # alert levels: from the next answer
        router.reconfigure(new.section("routing"), new.prices)
        meter.reconfigure(new.upstreams, new.prices)
        exporters.reconfigure_soon(new)  # on its own thread: stopping one waits for it
        secrets.policy = new.section("secrets")  # from the next request on
        if set(new.upstreams) != set(old.upstreams):
            intercepted.update(h.lower() for h in new.upstreams)
            master.options.update(allow_hosts=allow_hosts_patterns(tuple(new.upstreams)))
        notes = []
        if new.listen != old.listen:
            notes.append("[proxy] listen applies when the proxy restarts")
        return notes

    reloader = ConfigReloader(paths.config_file, paths.data_dir, config, load_config, apply_config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, master.shutdown)
    errors = _StartupErrors(master)
    run = asyncio.ensure_future(master.run())
    try:
        bound = await _wait_bound(master, run, errors, host, port, paths.config_file)
    except BaseException:
        writer.close()
        dispatcher.close()
        raise
    proxyserver = master.addons.get("proxyserver")
    watchdog = asyncio.ensure_future(deadline.watch(lambda: proxyserver.connections))
    # What startup built (price tables, mitmproxy's addons, certificates) lives as long
    # as the proxy: out of the collector's sight, full collections stop rescanning it on
    # the event loop (a cost on every call, and long pauses under load).
    gc.collect()
    gc.freeze()
    cabundle.secure_ca_files(paths.ca_dir)
    cabundle.write_bundle(paths)
    exporters = export.start(config, paths)  # own threads, reading the ledger
    _write_state(paths.proxy_state, bound, exporters.metrics_url)
    reloader.start()
    watching = asyncio.ensure_future(reloader.run())
    answering = asyncio.ensure_future(_apply_answers(meter))
    print(f"devmeter proxy listening on {bound[0]}:{bound[1]} (ledger: {paths.ledger})", flush=True)
    try:
        await run
    finally:
        watchdog.cancel()
        watching.cancel()
        answering.cancel()
        clear_status(paths.data_dir)
        exporters.close()
        secrets.close()  # its last findings reach the writer before it closes
        writer.close()
        dispatcher.close()
        if pusher is not None:
            pusher.close()
        pending.unlink(missing_ok=True)  # held requests end with the proxy
        paths.proxy_state.unlink(missing_ok=True)


async def _apply_answers(meter: Meter) -> None:
    """Answers in control.json reach the proxy when a request comes, or every half second
    here: one to an ask that timed out (nothing held any more) must take its popup and tray
    entry down now, not at the scope's next request."""
    while True:
        await asyncio.sleep(ANSWER_POLL_SECONDS)
        meter.apply_answers()


@dataclass(slots=True, frozen=True)
class BuiltMeter:
    """The Meter as the proxy runs it, and the parts of it a config reload or shutdown
    reaches (the writer is closed last, after the secrets worker hands on its findings)."""

    meter: Meter
    writer: LedgerWriter
    guard: Guard
    router: Router
    asks: AskBook
    quota_watch: QuotaWatch
    secrets: SecretInspector


def build_meter(
    config: Config,
    paths: Paths,
    *,
    proxy_port: int | None = None,
    notify: Callable[[Alert], None] | None = None,
    deadline: deadlines.HeaderDeadline | None = None,
    on_asks_changed: Callable[[list[dict[str, Any]]], None] | None = None,
) -> BuiltMeter:
    """The Meter and everything it meters with, for `config`: the ledger writer (a killed
    run's spool replayed), the guard and asks seeded with past spend, the router on the
    guard's session table, quota watch, the secret inspector. One builder for `serve` and
    benchmarks/hook_cost.py, so the benchmark measures the Meter that runs. `notify`: each
    alert's delivery beyond its ledger row (the proxy prints, notifies and pushes it)."""
    writer = LedgerWriter(paths.ledger)
    writer.wait_replayed()  # the seeds below read a killed run's spooled calls too
    attributor = Attributor(proxy_port=proxy_port)
    guard = Guard(
        config.section("budgets"),
        config.section("runaway"),
        config_path=str(paths.config_file),
        fingerprint_key=read_loop_key(paths),
    )
    # One session table: routing reads the spend the guard counts and seeds.
    router = Router(config.section("routing"), config.prices, sessions=guard.sessions)
    _seed(guard, paths)
    asks = AskBook(config.section("budgets"), guard.spend_in, guard.advice)
    quota_watch = QuotaWatch(config.section("quota"))
    _seed_quota(quota_watch, paths)
    pricing.warm()  # not on the first call: it would stall every call in flight

    def on_alert(alert: Alert) -> None:
        writer.add_alert(alert)
        if notify is not None:
            notify(alert)

    def on_billed(call: Call, billing: Billing, reading: QuotaReading | None) -> None:
        snapshots, alerts = quota_watch.observe(call, billing, reading)
        for snapshot, moved in snapshots:
            writer.add_quota(snapshot, moved)
        for alert in alerts:
            on_alert(alert)

    secrets = _secret_inspector(config, paths, writer, on_alert)
    meter = Meter(
        record=writer.add_call,  # spooled to disk before the client gets the answer
        attribute=make_attribute(attributor),
        upstreams=dict(config.upstreams),
        overrides=config.prices,
        router=router,
        guard=guard,
        on_alert=on_alert,
        control=ControlWatcher(control_path(paths.data_dir)),
        client_lookup=ClientProcessLookup(attributor),
        deadline=deadline,
        asks=asks,
        on_asks_changed=on_asks_changed,
        accounts=Accounts(paths.data_dir),
        on_billed=on_billed,
        secrets=secrets,
    )
    return BuiltMeter(meter, writer, guard, router, asks, quota_watch, secrets)


def _secret_inspector(
    config: Config, paths: Paths, writer: LedgerWriter, on_alert: Callable[[Alert], None]
) -> SecretInspector:
    """Always made, so a config reload can turn inspection on; with mode "off" it costs a
    dictionary lookup per request and detect-secrets is never imported."""
    _warm_detectors(config)
    return SecretInspector(
        config.section("secrets"),
        load_salt(paths.data_dir),
        lambda found: writer.add_finding(found.row()),
        on_alert,
        seen=seen_in_ledger(paths.ledger),
        config_path=str(paths.config_file),
    )


def _warm_detectors(config: Config) -> None:
    policy = config.section("secrets")
    if policy.mode != "off" or any(
        mode != "off" for mode in (*policy.repos.values(), *policy.modes.values())
    ):
        builtin_detectors()  # detect-secrets takes ~1 s to import


class ListenError(Exception):
    """The proxy cannot listen where it was asked to: one line for the user, and the exit
    code (`ports.EXIT_PORT_TAKEN` when the address is in use)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _check_listen(host: str, port: int, config: Path) -> None:
    problem = ports.bind_error(host, port)
    if problem is not None:
        raise _listen_error(host, port, problem, config)


def _listen_error(host: str, port: int, problem: OSError, config: Path) -> ListenError:
    """`config`: the config file, named in the advice (its `listen` is the other way out)."""
    if ports.is_in_use(problem):
        message = ports.taken_message(host, port, ports.holder(port), config=str(config))
        return ListenError(message, ports.EXIT_PORT_TAKEN)
    return ListenError(ports.listen_error_message(host, port, problem, config=str(config)), 1)


class _StartupErrors(logging.Handler):
    """Errors logged while mitmproxy brings its server up (a bind that failed after our own
    check passed, say), in place of mitmproxy's errorcheck addon.

    errorcheck ends a failed startup with `sys.exit(1)` from inside the event loop: that
    skips our clean-up, prints "Error logged during startup, exiting..." and leaves
    mitmproxy's log handlers posting to a closed loop (a `RuntimeError: Event loop is
    closed` traceback at exit). Watching the same errors here lets the proxy stop cleanly
    and say why in one line."""

    def __init__(self, master: DumpMaster) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []
        checker = master.addons.get("errorcheck")
        if checker is not None:
            master.addons.remove(checker)
            checker.finish()  # its log handler
        logging.getLogger().addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def close(self) -> None:
        logging.getLogger().removeHandler(self)
        super().close()


async def _wait_bound(
    master: DumpMaster,
    run: asyncio.Future[None],
    errors: _StartupErrors,
    host: str,
    port: int,
    config: Path,
) -> tuple[str, int]:
    """The address the proxy listens on once it does (port 0 picks a free one)."""
    proxyserver = master.addons.get("proxyserver")
    try:
        for _ in range(500):
            if run.done() or errors.messages:
                raise await _startup_failure(master, run, errors.messages, host, port, config)
            addresses = [addr for server in proxyserver.servers for addr in server.listen_addrs]
            if addresses:
                return str(addresses[0][0]), int(addresses[0][1])
            await asyncio.sleep(0.01)
    finally:
        errors.close()
    master.shutdown()
    raise SystemExit("devmeter: the proxy did not start listening within 5 seconds")


async def _startup_failure(
    master: DumpMaster,
    run: asyncio.Future[None],
    messages: list[str],
    host: str,
    port: int,
    config: Path,
) -> BaseException:
    """What to raise when mitmproxy could not start: the master is stopped first, so that
    its `done` hooks run and remove its log handlers."""
    master.shutdown()
    with contextlib.suppress(BaseException):
        await asyncio.wait_for(run, 5)
    problem = ports.bind_error(host, port)
    if problem is not None:
        return _listen_error(host, port, problem, config)
    why = "; ".join(messages) or "no reason given"
    return SystemExit(f"devmeter: the proxy stopped before it listened on {host}:{port}: {why}")


def _seed_quota(watch: QuotaWatch, paths: Paths) -> None:
    """Recent subscription use and the latest quota windows (billing-switch alerts and
    quota moves survive a restart); an unreadable ledger only starts them afresh."""
    try:
        conn = connect_readonly(paths.ledger)
        if conn is None:
            return
        try:
            watch.seed_from_ledger(conn, time.time())
        finally:
            conn.close()
    except sqlite3.Error as exc:
        log.warning("devmeter: could not read quota history from %s: %s", paths.ledger, exc)


def _seed(guard: Guard, paths: Paths) -> None:
    """Past spend from the ledger; an unreadable ledger is reported, and the proxy serves."""
    try:
        conn = connect_readonly(paths.ledger)
        if conn is None:
            return
        try:
            now = time.time()
            guard.seed_from_ledger(conn, now)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        print(
            f"devmeter: could not read past spend from {paths.ledger}: {exc}; budgets start "
            "from $0 until the ledger is readable.",
            file=sys.stderr,
            flush=True,
        )


def _unseeded(old: Budgets, new: Budgets) -> set[str]:
    """Scopes whose spend the guard has not been counting the way `new` counts it: newly
    watched, or the repo scope moved between a daily and a monthly period."""
    fresh = _watched(new) - _watched(old)
    if "repo" in _watched(new) and new.repo.period != old.repo.period:
        fresh.add("repo")
    return fresh


def _watched(budgets: Budgets) -> set[str]:
    """The scopes whose spend the guard counts: those with a cap, a threshold or asks."""
    return {
        scope
        for scope in SCOPES
        if budgets.scope(scope).block_usd is not None
        or budgets.scope(scope).notify_usd
        or budgets.scope(scope).ask_usd
    }


def _ledger_spend(paths: Paths, budgets: Budgets) -> dict[tuple[str, str], Decimal]:
    """Spend so far in every scope, from the ledger; empty if it cannot be read."""
    from devmeter.budget import BudgetTracker

    try:
        conn = connect_readonly(paths.ledger)
        if conn is None:
            return {}
        try:
            return spend_so_far(conn, BudgetTracker(budgets), time.time())
        finally:
            conn.close()
    except sqlite3.Error:
        return {}


def _notifier(paths: Paths, control_file: Path) -> Notifier:
    """Desktop notifications from the proxy itself, so they work without the tray too; an
    ask's buttons answer through control.json, like the tray menu and `devmeter allow`."""
    from devmeter.alert_delivery import Notifier, status_path

    def on_answer(ask_id: str, choice: str) -> None:
        control_state.answer(control_file, ask_id, choice)

    return Notifier(on_answer=on_answer, status_file=status_path(paths.data_dir))


def _pusher(config: Config) -> Pusher | None:
    """Alerts pushed to a phone or chat ([notify]), if any target is configured."""
    targets = config.section("notify")
    return Pusher(targets) if targets.targets else None


def _write_state(path: Path, bound: tuple[str, int], metrics_url: str | None = None) -> None:
    state = {"host": bound[0], "port": bound[1], "pid": os.getpid(), "started": time.time()}
    if metrics_url is not None:
        state["metrics_url"] = metrics_url
    tmp = path.with_suffix(".tmp")
    write_private(tmp, json.dumps(state))  # 0600: names the pid and port
    tmp.replace(path)


def run(
    config: Config,
    paths: Paths,
    pinned_upstreams: Mapping[str, str] | None = None,
    pinned_listen: tuple[str, int] | None = None,
) -> int:
    log_to_stderr()
    route_warnings(paths.data_dir)  # e.g. plyer's, when an alert is first notified
    try:
        asyncio.run(
            serve(config, paths, pinned_upstreams=pinned_upstreams, pinned_listen=pinned_listen)
        )
    except SpoolBusy as exc:  # a second proxy on the same ledger would count calls twice
        log.error("%s", exc)
        return 1
    except ListenError as exc:
        log.error("%s", exc)
        return exc.exit_code
    except OSError as exc:
        host, port = config.listen
        log.error(
            "devmeter: cannot listen on %s:%s: %s. Stop the other proxy or pass "
            "--listen 127.0.0.1:PORT.",
            host, port, exc.strerror or exc,
        )  # fmt: skip
        return 1
    return 0
