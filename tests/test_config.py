"""A broken config file is answered with file, key and line, and the fix."""

from pathlib import Path

import pytest

from devmeter.config import ConfigError, load, parse_listen, parse_upstream_arg


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def refused(path: Path) -> pytest.ExceptionInfo[ConfigError]:
    """What loading `path` raises: a ConfigError, or the test fails."""
    with pytest.raises(ConfigError) as caught:
        load(path)
    return caught


def test_missing_file_is_the_default_config(tmp_path: Path) -> None:
    config = load(tmp_path / "nope.toml")
    assert config.listen == ("127.0.0.1", 8788)
    assert config.prices == ()


def test_full_config(tmp_path: Path) -> None:
    config = load(
        write(
            tmp_path,
            '[proxy]\nlisten = "127.0.0.1:9999"\n\n[upstream]\n'
            '"api.anthropic.com" = "http://127.0.0.1:9000/"\n\n'
            '[[prices]]\nmodel = "claude-*"\ndiscount = 0.1\n',
        )
    )
    assert config.listen == ("127.0.0.1", 9999)
    assert config.upstreams == {"api.anthropic.com": "http://127.0.0.1:9000"}
    assert config.prices[0].model == "claude-*"


def test_invalid_toml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[proxy]\nlisten = "127.0.0.1:1"\n\n[upstream\n"a" = "http://b"\n')
    caught = refused(path)
    text = str(caught.value)
    assert str(path) in text
    assert "line 4" in text
    assert "not valid TOML" in text


def test_bad_value_names_file_key_and_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[[prices]]\nmodel = "a"\nfree = true\n\n[[prices]]\nmodel = "b"\ndiscount = 2\n',
    )
    caught = refused(path)
    err = caught.value
    assert err.path == path
    assert err.key == "prices[1].discount"
    assert err.line == 7
    assert f"{path}, line 7 [prices[1].discount]" in str(err)


def test_unknown_section_and_unquoted_host(tmp_path: Path) -> None:
    caught = refused(write(tmp_path, "[proxyy]\nlisten = 1\n"))
    assert caught.value.line == 1
    assert "valid sections" in str(caught.value)
    caught = refused(write(tmp_path, '[upstream]\napi.anthropic.com = "http://x"\n'))
    assert "quote the host" in str(caught.value)
    assert caught.value.line == 2


def test_listen_is_loopback_only() -> None:
    assert parse_listen("localhost:8080", "k") == ("localhost", 8080)
    assert parse_listen(9000, "k") == ("127.0.0.1", 9000)
    with pytest.raises(ConfigError, match="not a loopback"):
        parse_listen("0.0.0.0:8788", "--listen")
    with pytest.raises(ConfigError, match="no valid port"):
        parse_listen("127.0.0.1:http", "--listen")


def test_upstream_argument() -> None:
    assert parse_upstream_arg("api.openai.com=http://127.0.0.1:1/") == (
        "api.openai.com",
        "http://127.0.0.1:1",
    )
    with pytest.raises(ConfigError, match="HOST=URL"):
        parse_upstream_arg("api.openai.com")
    with pytest.raises(ConfigError, match="base URL"):
        parse_upstream_arg("api.openai.com=ftp://x")


def test_nested_sections_are_located(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[budgets.session]\nnotify_usd = [5]\n\n[budgets.day]\nnotify_usd = [50, 20]\n",
    )
    caught = refused(path)
    assert caught.value.key.startswith("budgets.day")
    assert caught.value.line == 5


def test_routing_rule_errors_are_located(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[routing]\nmode = "on"\n\n[[routing.rules]]\nname = "a"\nmodel = "claude-opus-*"\n'
        'to = "claude-haiku-5-5"\n\n[[routing.rules]]\nname = "b"\nmodel = "gpt-*"\nto = 42\n',
    )
    caught = refused(path)
    assert caught.value.key == "routing.rules[1].to"
    assert caught.value.line == 12


def test_template_is_a_valid_config(tmp_path: Path) -> None:
    from devmeter.config import TEMPLATE

    config = load(write(tmp_path, TEMPLATE))
    assert config.section("routing").mode == "shadow"


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ("[import]\nauto = 'yes'\n", "import.auto", 2),
        ("[export.otlp]\nendpoint = 'http://127.0.0.1:4318'\nlogs = 1\n", "export.otlp.logs", 3),
        ("[budgets.session]\ncount_covered = 0\n", "budgets.session.count_covered", 2),
        ("[[prices]]\nmodel = 'm'\nfree = 'yes'\n", "prices[0].free", 3),
        ("[secrets]\nmodes = 3\n", "secrets.modes", 2),
        ("export = 3\n", "export", 1),
        ("[notify]\nntfy = 'topic'\n", "notify.ntfy", 2),
    ],
)
def test_a_wrong_type_in_any_section_names_file_key_and_line_alike(
    tmp_path: Path, text: str, key: str, line: int
) -> None:
    # Every section checks tables and booleans with config_values' helpers: one wording.
    path = tmp_path / "config.toml"
    path.write_text(text)
    caught = refused(path)
    error = caught.value
    assert (error.key, error.line, error.path) == (key, line, path)
    assert error.message.startswith(("expected true or false", "expected a table ("))
    assert str(error).startswith(f"{path}, line {line} [{key}]: expected ")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:99999",
        "http://127.0.0.1:abc",
        "http://127.0.0.1:0",
        "http://exa mple.com",
        "https://gateway.example:-1/v1",
    ],
)
def test_an_upstream_url_whose_port_cannot_be_read_is_refused_at_load(
    tmp_path: Path, url: str
) -> None:
    # It used to load, then stop the proxy at start (a traceback, restarted every 30 s)
    # and fail a live reload with a ValueError after half of it was applied.
    path = write(tmp_path, f'[proxy]\n\n[upstream]\n"api.anthropic.com" = "{url}"\n')
    caught = refused(path)
    assert (caught.value.key, caught.value.line) == ("upstream.api.anthropic.com", 4)
    assert "http://127.0.0.1:9000" in caught.value.message
    assert caught.value.message.endswith(("has no valid port (1-65535)", "has no valid host"))
    with pytest.raises(ConfigError, match="has no valid"):
        parse_upstream_arg(f"api.openai.com={url}")


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ('[export.otlp]\nendpoint = "{url}"', "export.otlp.endpoint"),
        ('[notify.ntfy]\ntopic_env = "T"\nserver = "{url}"', "notify.ntfy.server"),
    ],
)
@pytest.mark.parametrize("url", ["http://collector:99999", "https://", "http://a b:4318"])
def test_a_push_url_that_could_never_be_sent_to_is_refused_at_load(
    tmp_path: Path, section: str, key: str, url: str
) -> None:
    # These loaded, then every push failed ("Port out of range 0-65535", "no host given")
    # in a log line, interval after interval.
    caught = refused(write(tmp_path, section.format(url=url) + "\n"))
    assert caught.value.key == key
    what = "port (1-65535)" if "99999" in url else "host"
    assert caught.value.message.endswith(f"has no valid {what}")


def test_a_directory_where_the_file_goes_says_to_move_it_aside(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.mkdir()
    caught = refused(path)
    assert str(caught.value) == (
        f"{path}: is a directory, not a file; move it aside (mv {path} {path}.dir); "
        "`devmeter config --init` writes a new file"
    )


def test_bytes_that_are_not_utf8_name_their_line_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b'[proxy]\n\nlisten = "127.0.0.1:\xff"\n')
    caught = refused(path)
    assert (
        str(caught.value) == f"{path}, line 3: not UTF-8 text (byte 0xff); save the file as UTF-8"
    )


def test_a_byte_order_mark_from_a_windows_editor_is_read_past(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes('\ufeff[proxy]\nlisten = "127.0.0.1:9999"\n'.encode())
    assert load(path).listen == ("127.0.0.1", 9999)


def test_an_unreadable_file_says_how_to_make_it_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Root reads any file whatever its mode, so the refusal is simulated.
    path = write(tmp_path, "")

    def refuse(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refuse)
    caught = refused(path)
    assert str(caught.value) == (
        f"{path}: cannot read the config file (Permission denied); make it readable by you "
        f"(chmod u+r {path}) or move it aside"
    )


@pytest.mark.parametrize(
    ("text", "line", "key", "fix"),
    [
        ("[budgets.session]\nblock_usd = 5\nblock_usd = 6\n", 3, "budgets.session.block_usd",
         "already set above; keep one"),
        ("[budgets.day]\nblock_usd = 1\n[budgets.day]\nnotify_usd = [2]\n", 3, "budgets.day",
         "put its keys under one header"),
        ('[proxy]\nlisten = "127.0.0.1:1\n', 2, "proxy.listen", "end it with its quote"),
        ("[secrets]\nallow = ['x\n", 2, "secrets.allow", "end it with ' on the same line"),
        ('[secrets]\nallow = ["sk-\\d+"]\n', 2, "secrets.allow", "single quotes ('\\d+')"),
        ("[proxy]\nlisten = 127.0.0.1:8788\n", 2, "proxy.listen", 'listen = "127.0.0.1:8788"'),
        ("[import]\nauto = True\n", 2, "import.auto", "true/false in lower case"),
        ("[budgets.day]\n\nnotify_usd = [1, 2\n\n[proxy]\n", 3, "budgets.day.notify_usd",
         "end it with ]"),
        ("[proxy\nlisten = 1\n", 1, "", "[section] header is not closed"),
        # A well-closed list over several lines above the unclosed one is not it.
        ("[budgets.day]\nnotify_usd = [\n  1,\n  2,\n]\n[budgets.session]\nask_usd = [3\n",
         7, "budgets.session.ask_usd", "end it with ]"),
        ('[routing]\nmode = "on"\n\n[[routing.rules]\nname = "x"\n', 4, "routing.rules",
         "[[array]] header is not closed: end it with ]]"),
    ],
)  # fmt: skip
def test_a_toml_syntax_error_names_its_line_key_and_fix(
    tmp_path: Path, text: str, line: int, key: str, fix: str
) -> None:
    # It said only tomllib's words ("Cannot overwrite a value", "Illegal character '\n'",
    # "Unclosed array (at end of document)" with no line at all).
    path = write(tmp_path, text)
    caught = refused(path)
    error = caught.value
    assert (error.line, error.key) == (line, key)
    named = f" [{key}]" if key else ""
    assert str(error).startswith(f"{path}, line {line}{named}: not valid TOML: ")
    assert fix in error.message


@pytest.mark.parametrize(
    ("name", "hint"),
    [("privat-key", "did you mean 'private-key'?"), ("passwords", "kinds are private-key, ")],
)
def test_a_secrets_mode_for_no_kind_or_rule_is_refused(
    tmp_path: Path, name: str, hint: str
) -> None:
    # It loaded and never applied: the kind kept the default mode without a word.
    path = write(tmp_path, f'[secrets]\nmode = "warn"\n[secrets.modes]\n"{name}" = "block"\n')
    caught = refused(path)
    assert (caught.value.key, caught.value.line) == (f"secrets.modes.{name}", 4)
    assert hint in caught.value.message


def test_a_secrets_mode_may_name_a_kind_a_builtin_rule_or_a_rule_of_yours(tmp_path: Path) -> None:
    text = (
        '[secrets.modes]\n"dotenv-secret" = "off"\n"pem-block" = "block"\n"acme" = "redact"\n'
        '[[secrets.detect]]\nname = "acme"\nregex = "acme_[a-z]{8}"\n'
    )
    modes = load(write(tmp_path, text)).section("secrets").modes
    assert modes == {"dotenv-secret": "off", "pem-block": "block", "acme": "redact"}


@pytest.mark.parametrize(
    ("text", "key", "line", "said"),
    [
        ("[runaway]\nwindow_minutes = 500\n", "runaway.window_minutes", 2,
         "500 is above idle_evict_minutes (120)"),
        ("[runaway]\n\nloop_window_minutes = 1e308\n", "runaway.loop_window_minutes", 3,
         "is above idle_evict_minutes (120)"),
        ("[runaway]\nwindow_minutes = 30\nidle_evict_minutes = 20\n",
         "runaway.idle_evict_minutes", 3, "must be at least window_minutes (30)"),
    ],
)  # fmt: skip
def test_a_runaway_window_past_idle_eviction_names_the_key_written(
    tmp_path: Path, text: str, key: str, line: int, said: str
) -> None:
    # It blamed idle_evict_minutes, at the [runaway] header, when the user had not written it.
    caught = refused(write(tmp_path, text))
    assert (caught.value.key, caught.value.line) == (key, line)
    assert said in caught.value.message


@pytest.mark.parametrize(
    ("entry", "key", "said"),
    [
        ('provider = "anthropc"\nmodel = "claude-*"\ndiscount = 0.1', "prices[0].provider",
         "unknown provider 'anthropc'; did you mean 'anthropic'?"),
        ('model = "claud-opus-9"\ndiscount = 0.1', "prices[0].model",
         "no list price for 'claud-opus-9', so there is nothing to discount; set its rates"),
    ],
)  # fmt: skip
def test_a_price_override_that_could_never_apply_is_refused(
    tmp_path: Path, entry: str, key: str, said: str
) -> None:
    # Both loaded and changed nothing: a provider no call carries never matched, and a
    # discount off no list price left the calls unpriced.
    caught = refused(
        write(tmp_path, f'[[prices]]\nmodel = "x"\nfree = true\n\n[[prices]]\n{entry}\n')
    )
    assert caught.value.key == key.replace("[0]", "[1]")
    assert caught.value.line == 6
    assert said in caught.value.message


def test_a_price_override_provider_alias_is_kept_as_the_id_calls_carry(tmp_path: Path) -> None:
    text = '[[prices]]\nprovider = "google-gla"\nmodel = "self-hosted"\nfree = true\n'
    assert load(write(tmp_path, text)).prices[0].provider == "google"


@pytest.mark.parametrize("minutes", ["1e308", "inf", "nan", "0.5", "20000"])
def test_an_import_interval_the_import_thread_cannot_wait_is_refused(
    tmp_path: Path, minutes: str
) -> None:
    # 1e308 and inf loaded, then the background import thread died of an OverflowError
    # at its first wait: history stopped importing with only a thread traceback.
    caught = refused(write(tmp_path, f"[import]\nauto = true\ninterval_minutes = {minutes}\n"))
    assert (caught.value.key, caught.value.line) == ("import.interval_minutes", 3)
    assert "from 1 to 10080 (a week)" in caught.value.message
    assert "auto = false" in caught.value.message


def test_the_longest_import_interval_can_be_waited_on() -> None:
    import threading

    from devmeter.importers.auto import INTERVAL_MAX_MINUTES

    # The import thread waits on a threading.Event, which refuses more than TIMEOUT_MAX.
    assert INTERVAL_MAX_MINUTES * 60 < threading.TIMEOUT_MAX


@pytest.mark.parametrize(
    ("text", "key", "said"),
    [
        ("[budget.session]\nblock_usd = 5\n", "budget", "unknown section; did you mean 'budgets'?"),
        ("[budgets.session]\nblock_uds = 5\n", "budgets.session.block_uds",
         "unknown key 'block_uds'; did you mean 'block_usd'? valid keys in [budgets.session]"),
        ('[notify.slack]\nwebhook_url = "https://hooks.slack.com/x"\n', "notify.slack.webhook_url",
         "did you mean 'webhook_url_env'?"),
        ('listen = "127.0.0.1:9000"\n', "listen",
         "a setting above every [section] header; put it under [proxy]"),
    ],
)  # fmt: skip
def test_a_misspelt_or_misplaced_key_is_named_with_the_likely_fix(
    tmp_path: Path, text: str, key: str, said: str
) -> None:
    caught = refused(write(tmp_path, text))
    assert caught.value.key == key
    assert said in caught.value.message


@pytest.mark.parametrize(
    ("text", "key", "hint"),
    [
        ('[budgets.session]\nblock_usd = "20"\n', "budgets.session.block_usd",
         "write the number without quotes: block_usd = 20"),
        ('[budgets.day]\nblock_usd = "$50"\n', "budgets.day.block_usd",
         "write the number without quotes: block_usd = 50"),
        ('[runaway]\nwindow_minutes = "10"\n', "runaway.window_minutes",
         "without quotes: window_minutes = 10"),
        ('[[prices]]\nmodel = "m"\ninput_mtok = "3"\n', "prices[0].input_mtok",
         "without quotes: input_mtok = 3"),
        ('[import]\nauto = "false"\n', "import.auto", "write it without quotes: auto = false"),
    ],
)  # fmt: skip
def test_a_quoted_number_or_boolean_is_told_to_lose_its_quotes(
    tmp_path: Path, text: str, key: str, hint: str
) -> None:
    caught = refused(write(tmp_path, text))
    assert caught.value.key == key
    assert caught.value.message.endswith(hint)


def test_text_that_looks_like_a_number_where_text_goes_gets_no_such_hint(tmp_path: Path) -> None:
    caught = refused(write(tmp_path, '[[routing.rules]]\nname = "x"\nto = "5"\n'))
    assert "without quotes" not in caught.value.message


def test_a_link_to_a_config_that_is_gone_is_refused_not_read_as_defaults(
    tmp_path: Path,
) -> None:
    # It loaded as the default config: every cap in the file the link pointed to dropped.
    path = tmp_path / "config.toml"
    path.symlink_to(tmp_path / "dotfiles" / "devmeter.toml")
    caught = refused(path)
    assert str(caught.value) == (
        f"{path}: is a link to {tmp_path / 'dotfiles' / 'devmeter.toml'}, which does not "
        f"exist; fix the link (ln -sf TARGET {path}) or remove it to run on defaults"
    )
