"""Configuration: the built-in default, durations, key-path errors, example.toml and ``config check``."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from config import (
    CONFIG_ENV,
    ConfigError,
    ConsoleConfig,
    DaemonConfig,
    LocalInboxConfig,
    PartnerConfig,
    S3InboxConfig,
    SftpInboxConfig,
    StoreConfig,
    WebhookConfig,
    build_config,
    load_config,
    parse_duration,
)
from config.model import DEFAULT_PATTERNS, FORMAT_NAMES, INBOX_CONFIGS, Limits
from inbox_daemon import settings

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "example.toml"


def problems_of(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        build_config(data)
    return info.value.problems


def _example_in(folder: Path) -> Path:
    """example.toml copied into ``folder``, its key_file and known_hosts pointing at real files."""
    key, known = folder / "globex.key", folder / "known_hosts"
    key.write_text("not a real key\n")
    known.write_text("sftp.globex.example ssh-ed25519 AAAA\n")
    text = EXAMPLE.read_text(encoding="utf-8")
    assert "/etc/inbox-daemon/keys/globex" in text and "/etc/inbox-daemon/known_hosts" in text
    text = (text.replace("/etc/inbox-daemon/keys/globex", str(key))
                .replace("/etc/inbox-daemon/known_hosts", str(known)))
    path = folder / "example.toml"
    path.write_text(text, encoding="utf-8")
    return path


# -- the built-in default ------------------------------------------------------------------------

def test_no_file_and_no_environment_gives_the_built_in_default(workdir):
    config = load_config(None)
    assert config.source is None
    assert config.daemon.state_dir == Path("var")
    assert config.store.url == "sqlite:///var/catalog.db"
    assert list(config.partners) == ["default"]
    partner = config.partner("default")
    assert (partner.currency, partner.preset, dict(partner.columns)) == ("USD", None, {})
    assert config.inboxes == (LocalInboxConfig(partner="default", path="inbox/default"),)
    assert config.inboxes[0].patterns == DEFAULT_PATTERNS


def test_default_state_folders_are_under_var(workdir):
    daemon = load_config(None).daemon
    assert (daemon.spool_dir, daemon.results_dir, daemon.audit_dir) == (
        Path("var/spool"), Path("var/results"), Path("var/audit"))


def test_config_path_comes_from_the_environment_when_not_given(workdir, monkeypatch):
    (workdir / "c.toml").write_text('[[partners]]\nid = "envpartner"\n')
    monkeypatch.setenv(CONFIG_ENV, str(workdir / "c.toml"))
    config = load_config(None)
    assert list(config.partners) == ["envpartner"]
    assert config.source == workdir / "c.toml"


def test_every_partner_gets_a_local_inbox_when_none_are_configured():
    config = build_config({"partners": [{"id": "a"}, {"id": "b"}]})
    assert [(i.partner, i.kind, i.path) for i in config.inboxes] == [
        ("a", "local", "inbox/a"), ("b", "local", "inbox/b")]


def test_default_store_url_follows_the_state_dir():
    assert build_config({"daemon": {"state_dir": "/srv/daemon"}}).store.url == "sqlite:////srv/daemon/catalog.db"
    assert build_config({"daemon": {"state_dir": "state"}}).store.url == "sqlite:///state/catalog.db"


def test_currency_is_normalised_to_upper_case():
    assert build_config({"partners": [{"id": "a", "currency": "eur"}]}).partner("a").currency == "EUR"


def test_s3_prefix_gets_a_trailing_slash():
    config = build_config({"partners": [{"id": "a"}],
                           "inboxes": [{"partner": "a", "kind": "s3", "bucket": "b", "prefix": "drops"}]})
    assert config.inboxes[0].prefix == "drops/"


def test_each_kind_of_inbox_gets_its_own_type_with_the_defaults_of_its_dataclass(tmp_path):
    config = build_config({"partners": [{"id": "a"}], "inboxes": [
        {"partner": "a", "path": "./in/a/"},
        {"partner": "a", "kind": "sftp", "host": "h", "username": "u", "password_env": "PW",
         "known_hosts": __file__},
        {"partner": "a", "kind": "s3", "bucket": "b", "prefix": "drops/"},
    ]})
    assert config.inboxes == (
        LocalInboxConfig(partner="a", path="in/a"),
        SftpInboxConfig(partner="a", path=".", host="h", username="u", password_env="PW", known_hosts=__file__),
        S3InboxConfig(partner="a", path="drops/", bucket="b", prefix="drops/"),
    )
    assert [i.id for i in config.inboxes] == ["local:in/a", "sftp:u@h:22.", "s3:b/drops/"]


# -- durations -----------------------------------------------------------------------------------

@pytest.mark.parametrize("value, seconds", [
    ("2s", 2.0), ("500ms", 0.5), ("1m", 60.0), ("1h", 3600.0), (3, 3.0), (1.5, 1.5), ("10", 10.0),
    (" 2 s ", 2.0), ("0.25s", 0.25), (0, 0.0),
])
def test_durations_are_read_as_seconds(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["abc", "", "2 days", "5x", "-1s", -1, True, "1s2"])
def test_malformed_or_negative_durations_are_refused(value):
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_durations_are_refused(value):
    with pytest.raises(ValueError):
        parse_duration(value)


def test_inbox_durations_are_parsed():
    config = build_config({"partners": [{"id": "a"}], "inboxes": [
        {"partner": "a", "kind": "s3", "bucket": "b", "settle": "500ms", "poll_interval": "2m"}]})
    assert (config.inboxes[0].settle, config.inboxes[0].poll_interval) == (0.5, 120.0)


def test_bad_duration_is_reported_under_its_key_path():
    problems = problems_of({"partners": [{"id": "a"}], "inboxes": [{"partner": "a", "settle": "soon"}]})
    assert len(problems) == 1 and problems[0].startswith("inboxes[0].settle: ")


# -- errors name key paths -----------------------------------------------------------------------

def test_sftp_inbox_without_host_names_the_key_path():
    problems = problems_of({
        "partners": [{"id": "a"}],
        "inboxes": [{"partner": "a"}, {"partner": "a", "kind": "sftp", "username": "u",
                                       "password_env": "PATH", "known_hosts": __file__}],
    })
    assert problems == ['inboxes[1].host: required for kind "sftp"']


def test_sftp_inbox_lists_every_missing_key():
    problems = problems_of({"partners": [{"id": "a"}], "inboxes": [{"partner": "a", "kind": "sftp"}]})
    assert set(problems) == {
        'inboxes[0].host: required for kind "sftp"',
        'inboxes[0].username: required for kind "sftp"',
        'inboxes[0].known_hosts: required for kind "sftp"',
        'inboxes[0].key_file: required for kind "sftp" (or password_env)',
    }


def test_sftp_key_files_must_exist(tmp_path):
    problems = problems_of({"partners": [{"id": "a"}], "inboxes": [{
        "partner": "a", "kind": "sftp", "host": "h", "username": "u",
        "key_file": str(tmp_path / "missing.key"), "known_hosts": str(tmp_path / "missing_hosts")}]})
    assert set(problems) == {f"inboxes[0].key_file: file not found: {tmp_path / 'missing.key'}",
                             f"inboxes[0].known_hosts: file not found: {tmp_path / 'missing_hosts'}"}


def test_unset_password_env_is_a_warning_not_an_error_of_the_file(monkeypatch):
    """An admin's shell (jobs list, audit verify) rarely holds the daemon's secrets."""
    from config import missing_secrets
    monkeypatch.delenv("NO_SUCH_SFTP_PASSWORD", raising=False)
    config = build_config({"partners": [{"id": "a"}], "inboxes": [{
        "partner": "a", "kind": "sftp", "host": "h", "username": "u", "known_hosts": __file__,
        "password_env": "NO_SUCH_SFTP_PASSWORD"}]})
    assert missing_secrets(config) == [
        "inboxes[0].password_env: environment variable NO_SUCH_SFTP_PASSWORD is not set"]


def test_s3_inbox_without_bucket_names_the_key_path():
    assert problems_of({"partners": [{"id": "a"}], "inboxes": [{"partner": "a", "kind": "s3"}]}) == [
        'inboxes[0].bucket: required for kind "s3"']


def test_bad_partner_currency_names_the_key_path():
    problems = problems_of({"partners": [{"id": "a"}, {"id": "b", "currency": "DOLLARS"}]})
    assert len(problems) == 1 and problems[0].startswith("partners[1].currency: ")
    assert "DOLLARS" in problems[0]


@pytest.mark.parametrize("data, expected", [
    ({"colour": 1}, "colour: unknown key"),
    ({"daemon": {"worker": 3}}, "daemon.worker: unknown key"),
    ({"store": {"uri": "x"}}, "store.uri: unknown key"),
    ({"partners": [{"id": "a", "curency": "USD"}]}, "partners[0].curency: unknown key"),
    ({"partners": [{"id": "a", "webhook": {"url": "https://h", "secret": "x"}}]},
     "partners[0].webhook.secret: unknown key"),
    ({"partners": [{"id": "a"}], "inboxes": [{"partner": "a", "paht": "x"}]}, "inboxes[0].paht: unknown key"),
])
def test_unknown_keys_are_named_with_their_path(data, expected):
    assert expected in problems_of(data)


@pytest.mark.parametrize("inbox, expected", [
    ({"poll_interval": "1m"}, 'inboxes[0].poll_interval: unknown key for kind "local"'),
    ({"bucket": "b"}, 'inboxes[0].bucket: unknown key for kind "local"'),
    ({"kind": "s3", "bucket": "b", "host": "h"}, 'inboxes[0].host: unknown key for kind "s3"'),
    ({"kind": "sftp", "host": "h", "username": "u", "password_env": "PW", "known_hosts": __file__,
      "prefix": "x/"}, 'inboxes[0].prefix: unknown key for kind "sftp"'),
])
def test_a_key_of_another_kind_of_inbox_is_named_as_such(inbox, expected):
    assert problems_of({"partners": [{"id": "a"}], "inboxes": [{"partner": "a", **inbox}]}) == [expected]


def test_an_unknown_kind_is_the_only_problem_reported_for_its_inbox():
    """Which keys an inbox may have depends on its kind: none can be judged without one."""
    problems = problems_of({"partners": [{"id": "a"}], "inboxes": [{"partner": "a", "kind": "ftp", "host": "h"}]})
    assert problems == ["inboxes[0].kind: must be one of local, sftp, s3; got 'ftp'"]


def test_inbox_for_an_unknown_partner_is_an_error():
    problems = problems_of({"partners": [{"id": "a"}], "inboxes": [{"partner": "ghost"}]})
    assert problems == ["inboxes[0].partner: no [[partners]] entry with id 'ghost'"]


@pytest.mark.parametrize("key, value", [("max_reject_ratio", 1.5), ("max_reject_ratio", -0.1),
                                        ("max_deactivate_ratio", 2), ("max_deactivate_ratio", float("nan"))])
def test_ratios_outside_zero_to_one_are_errors(key, value):
    problems = problems_of({"partners": [{"id": "a", key: value}]})
    assert len(problems) == 1 and problems[0].startswith(f"partners[0].{key}: must be between 0 and 1")


@pytest.mark.parametrize("key", ["max_reject_ratio", "max_deactivate_ratio"])
@pytest.mark.parametrize("value", [0, 1, 0.5])
def test_ratios_from_zero_to_one_are_accepted(key, value):
    assert getattr(build_config({"partners": [{"id": "a", key: value}]}).partner("a"), key) == value


@pytest.mark.parametrize("data, expected", [
    ({"daemon": {"workers": 0}}, "daemon.workers: must be at least 1"),
    ({"daemon": {"workers": "2"}}, "daemon.workers: expected int, got str"),
    ({"daemon": {"workers": True}}, "daemon.workers: expected int"),
    ({"daemon": {"log_format": "xml"}}, "daemon.log_format: must be one of json, console"),
    ({"daemon": {"health": "localhost"}}, "daemon.health: expected \"host:port\""),
    ({"store": {"url": "mysql://h/db"}}, "store.url: expected sqlite:///"),
    ({"partners": [{"id": "bad id!"}]}, "partners[0].id: use letters"),
    ({"partners": [{"currency": "USD"}]}, "partners[0].id: required"),
    ({"partners": [{"id": "a"}, {"id": "a"}]}, "partners[1].id: duplicate partner id 'a'"),
    ({"partners": [{"id": "a", "encoding": "klingon"}]}, "partners[0].encoding: unknown encoding"),
    ({"partners": [{"id": "a", "decimal_separator": ";"}]}, "partners[0].decimal_separator: must be one of"),
    ({"partners": [{"id": "a", "columns": {"colour": "Farbe"}}]}, "partners[0].columns.colour: not a canonical"),
    ({"partners": [{"id": "a", "columns": {"sku": " "}}]}, "partners[0].columns.sku: expected"),
    ({"partners": [{"id": "a", "webhook": {"url": "ftp://x"}}]}, "partners[0].webhook.url: expected an http"),
    ({"partners": [{"id": "a"}], "inboxes": [{"partner": "a", "kind": "ftp"}]}, "inboxes[0].kind: must be one of"),
    ({"partners": [{"id": "a"}], "inboxes": [{"partner": "a", "mode": "full"}]}, "inboxes[0].mode: must be one of"),
    ({"partners": [{"id": "a"}], "inboxes": [{"partner": "a", "on_success": "x"}]},
     "inboxes[0].on_success: must be one of"),
    ({"partners": [{"id": "a"}], "inboxes": [{"partner": "a", "patterns": []}]}, "inboxes[0].patterns: expected"),
    ({"partners": [{"id": "a"}], "inboxes": [{"partner": "a", "format": "yaml"}]}, "inboxes[0].format: must be one of"),
    ({"partners": [{"id": "a"}], "inboxes": [{"partner": "a"}, {"partner": "a"}]},
     "inboxes[1]: same location as inboxes[0]"),
    ({"partners": {"id": "a"}}, "partners: expected [[partners]] tables"),
])
def test_each_bad_value_is_reported_under_its_key_path(data, expected):
    problems = problems_of(data)
    assert any(p.startswith(expected) for p in problems), problems


def test_all_problems_are_reported_together():
    with pytest.raises(ConfigError) as info:
        build_config({
            "extra": 1,
            "daemon": {"workers": 0},
            "partners": [{"id": "a", "currency": "XX", "max_reject_ratio": 1.5}],
            "inboxes": [{"partner": "a", "kind": "sftp"}, {"partner": "nobody"}],
        })
    keys = [p.split(":")[0] for p in info.value.problems]
    assert set(keys) == {"extra", "daemon.workers", "partners[0].currency", "partners[0].max_reject_ratio",
                         "inboxes[0].host", "inboxes[0].username", "inboxes[0].known_hosts",
                         "inboxes[0].key_file", "inboxes[1].partner"}
    for problem in info.value.problems:
        assert problem in str(info.value)


def test_an_unknown_preset_is_reported_with_every_other_problem(workdir):
    path = workdir / "p.toml"
    path.write_text('[[partners]]\nid = "a"\ncurrency = "XX"\npreset = "ebay"\n')
    with pytest.raises(ConfigError) as info:
        settings.load(path)
    currency, preset = info.value.problems
    assert currency.startswith("partners[0].currency: ")
    assert preset.startswith("partners[0].preset: unknown preset 'ebay'; known: akeneo, auto, google-merchant")


def test_config_imports_no_adapters():
    """adapters build on config; config learns preset names from its caller (inbox_daemon.settings)."""
    code = ("import sys, config; config.build_config({'partners': [{'id': 'a', 'preset': 'x', 'currency': 'EUR', "
            "'columns': {'sku': 'SKU'}}], 'inboxes': [{'partner': 'a', 'format': 'csv'}]}); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'adapters'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1], check=True)
    assert result.stdout.strip() == "[]"


def test_the_format_names_of_the_config_are_exactly_the_readers():
    from adapters.readers import FORMATS
    assert sorted(FORMATS) == sorted(FORMAT_NAMES)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml")


def test_invalid_toml_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[daemon\nworkers = 2\n")
    with pytest.raises(ConfigError, match="invalid TOML") as info:
        load_config(path)
    assert info.value.source == path and str(path) in str(info.value)


# -- example.toml --------------------------------------------------------------------------------

def test_example_toml_loads_once_its_key_files_exist(tmp_path):
    config = load_config(_example_in(tmp_path))
    assert list(config.partners) == ["acme", "globex", "initech"]
    acme = config.partner("acme")
    assert (acme.preset, dict(acme.columns)) == ("shopify", {"sku": ("Variant SKU",), "price": ("Variant Price",)})
    assert acme.webhook == WebhookConfig(url="https://hooks.acme.example/catalog", secret_env="ACME_HOOK_SECRET")
    assert (config.partner("globex").currency, config.partner("globex").decimal_separator) == ("EUR", ",")
    assert [i.kind for i in config.inboxes] == ["local", "sftp", "s3"]
    local, sftp, s3 = config.inboxes
    assert (local.path, local.settle) == ("inbox/acme", 2.0)
    assert (sftp.host, sftp.port, sftp.known_hosts, sftp.poll_interval, sftp.settle) == (
        "sftp.globex.example", 22, str(tmp_path / "known_hosts"), 60.0, 10.0)
    assert (s3.bucket, s3.prefix, s3.region) == ("partner-drops", "initech/", "us-east-1")


def _documented_example() -> dict:
    """example.toml with its commented-out ``key = value`` examples made live."""
    lines = []
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        live, _, comment = line.partition("#")
        m = re.match(r"\s*(?:or\s+)?([A-Za-z_][A-Za-z0-9_]*\s*=.*)$", comment)
        if m:
            try:
                tomllib.loads(m.group(1))
            except tomllib.TOMLDecodeError:
                m = None
        lines.append(live)
        if m:
            lines.append(m.group(1))
    return tomllib.loads("\n".join(lines))


@pytest.mark.parametrize("model, section", [
    (DaemonConfig, "daemon"), (StoreConfig, "store"), (PartnerConfig, "partners"), (WebhookConfig, "webhook"),
    (LocalInboxConfig, "inboxes"), (SftpInboxConfig, "inboxes"), (S3InboxConfig, "inboxes"), (Limits, "limits"),
    (ConsoleConfig, "console"),
])
def test_example_toml_documents_every_key_of_the_model(model, section):
    doc = _documented_example()
    if section == "daemon":
        keys = set(doc[section]) | {"limits"}       # its own [limits] table
    elif section in ("store", "limits", "console"):
        keys = set(doc[section])
    elif section == "webhook":
        keys = {k for p in doc["partners"] if "webhook" in p for k in p["webhook"]}
    else:
        keys = {k for table in doc[section] for k in table}
        keys |= {"key_value"} if "attributes" in keys else set()    # [attributes] key_value
    missing = {f.name for f in dataclasses.fields(model)} - keys
    assert not missing, f"example.toml does not show {sorted(missing)} in [{section}]"


def test_example_toml_uses_no_key_the_model_lacks():
    doc = _documented_example()
    assert set(doc) <= {"daemon", "store", "partners", "inboxes", "limits", "console"}
    for section, model in (("daemon", DaemonConfig), ("store", StoreConfig), ("limits", Limits),
                           ("console", ConsoleConfig)):
        assert set(doc[section]) <= {f.name for f in dataclasses.fields(model)}
    for table in doc["partners"]:
        assert set(table) <= {f.name for f in dataclasses.fields(PartnerConfig)} - {"key_value"} | {"attributes"}
    for table in doc["inboxes"]:
        assert set(table) <= {f.name for f in dataclasses.fields(INBOX_CONFIGS[table.get("kind", "local")])}


# -- config check --------------------------------------------------------------------------------

def test_config_check_prints_the_default_as_json(cli):
    result = cli("config", "check")
    assert result.code == 0, result.err
    data = result.json()
    assert data["source"] == "built-in default"
    assert data["store"]["url"] == "sqlite:///var/catalog.db"
    assert data["daemon"]["state_dir"] == "var"
    assert [p["id"] for p in data["partners"]] == ["default"]
    assert data["partners"][0]["currency"] == "USD"
    assert [(i["partner"], i["kind"], i["path"]) for i in data["inboxes"]] == [
        ("default", "local", "inbox/default")]


def test_config_check_of_the_example_succeeds(cli, workdir):
    result = cli("config", "check", "--config", _example_in(workdir))
    assert result.code == 0, result.err
    assert [p["id"] for p in result.json()["partners"]] == ["acme", "globex", "initech"]


def test_config_check_of_a_broken_file_exits_2_naming_every_key_path(cli, workdir):
    path = workdir / "broken.toml"
    path.write_text('[[partners]]\nid = "acme"\ncurrency = "XX"\n\n'
                    '[[inboxes]]\npartner = "acme"\nkind = "sftp"\n')
    result = cli("config", "check", "--config", path)
    assert result.code == 2
    assert result.out == ""
    assert 'inboxes[0].host: required for kind "sftp"' in result.err
    assert "partners[0].currency: " in result.err
    assert str(path) in result.err


def test_config_check_of_a_missing_file_exits_2(cli, workdir):
    result = cli("config", "check", "--config", workdir / "absent.toml")
    assert result.code == 2
    assert "file not found" in result.err


@pytest.mark.parametrize("text, problem, secrets", [
    ('[store]\nurl = "postgresql://u:Pw0rdInUrl@h/db"\n', "store.url: a password must not be written in the file",
     ("Pw0rdInUrl",)),
    ('[[inboxes]]\npartner = "default"\nkind = "s3"\nbucket = "drops"\n'
     'endpoint_url = "http://AKIAINURL:UrlSecretPass99@127.0.0.1:9000"\n',
     "endpoint_url: credentials must not be written in the file", ("UrlSecretPass99", "AKIAINURL")),
], ids=["store-password", "s3-endpoint-credentials"])
def test_a_secret_written_into_a_url_in_the_file_is_refused_without_echoing_it(cli, workdir, text, problem, secrets):
    path = workdir / "urls.toml"
    path.write_text(text)
    result = cli("config", "check", "--config", path)
    assert result.code == 2
    assert problem in result.err
    assert not any(secret in result.out + result.err for secret in secrets)


def test_store_password_env_and_lease_are_read(workdir, monkeypatch):
    path = workdir / "pg.toml"
    path.write_text('[store]\nurl = "postgresql://u@h/db"\npassword_env = "PG_PW"\nlease = "10s"\n')
    config = load_config(path)
    assert (config.store.url, config.store.password_env, config.store.lease) == ("postgresql://u@h/db", "PG_PW", 10.0)


# -- [console] ------------------------------------------------------------------------------------

def test_console_is_off_by_default_and_local_needs_no_credentials():
    assert build_config({}).console.address == ""
    local = build_config({"console": {"address": "127.0.0.1:9465"}}).console
    assert local.local and not local.login


@pytest.mark.parametrize("console, problem", [
    ({"address": "0.0.0.0:9465"}, "console.address: 0.0.0.0 is not a loopback address"),
    ({"address": ":9465"}, "console.address: every address is not a loopback address"),
    ({"address": "127.0.0.1:9465", "require_login": True}, "console.address: a login is required"),
    ({"address": "0.0.0.0:9465", "admins_env": "not a name"}, "console.admins_env: expected the name of an environment"),
    ({"address": "127.0.0.1:9465", "tls_cert": "c.pem"}, "console: tls_cert and tls_key go together"),
    ({"address": "127.0.0.1:9465", "password": "hunter2"}, "console.password"),
    ({"address": "127.evil.example:9465"}, "console.address: 127.evil.example is not a loopback address"),
])
def test_console_settings_that_are_refused(console, problem):
    with pytest.raises(ConfigError) as refused:
        build_config({"console": console})
    assert any(p.startswith(problem) for p in refused.value.problems), refused.value.problems


def test_a_name_with_five_wrong_passwords_in_five_minutes_is_not_checked_until_they_age(monkeypatch):
    """48 parallel guesses went through in 9 s, each waiting its pause on a console thread of
    its own: past five, a name is refused at once, the right password too, while others log in."""
    from inbox_daemon.console import access
    monkeypatch.setattr(access, "FAILED_LOGIN_PAUSE", 0.0)
    now = [1000.0]
    creds = access.Credentials(admins={"alice": access.hash_password("correct horse"),
                                       "bob": access.hash_password("battery staple")},
                               failures=access._Failures(clock=lambda: now[0]))
    for _ in range(access.FAILED_LOGINS):
        assert not creds.check_password("alice", "guess")
    with pytest.raises(access.LoginThrottled) as throttled:
        creds.check_password("alice", "correct horse")
    assert throttled.value.retry_after == access.FAILED_LOGIN_WINDOW
    assert creds.check_password("bob", "battery staple")          # another admin is not held up
    now[0] += access.FAILED_LOGIN_WINDOW + 1
    assert creds.check_password("alice", "correct horse")


def test_wrong_passwords_sent_in_parallel_are_checked_five_times_at_most(monkeypatch):
    """Guesses in flight together each passed the count before any of them failed: 8 of 20
    were checked. An attempt counts from its start."""
    import concurrent.futures

    from inbox_daemon.console import access
    monkeypatch.setattr(access, "FAILED_LOGIN_PAUSE", 0.3)
    creds = access.Credentials(admins={"carol": access.hash_password("correct horse")})

    def guess(i: int) -> str:
        try:
            return "checked" if not creds.check_password("carol", f"guess {i}") else "in"
        except access.LoginThrottled:
            return "refused"
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(guess, range(20)))

    assert answers.count("checked") == access.FAILED_LOGINS and answers.count("refused") == 15


def test_console_credentials_come_from_the_environment_only():
    from config import missing_secrets
    from inbox_daemon.console.access import credentials, hash_password
    console = build_config({"console": {"address": "0.0.0.0:9465", "admins_env": "ADMINS",
                                        "token_env": "TOKEN"}}).console
    with pytest.raises(ConfigError, match="ADMINS or TOKEN is not set"):
        credentials(console, {})
    with pytest.raises(ConfigError, match="not name=<hash>"):
        credentials(console, {"ADMINS": "alice:secret"})
    with pytest.raises(ConfigError, match="shorter than 16"):
        credentials(console, {"TOKEN": "short"})
    creds = credentials(console, {"ADMINS": f"alice={hash_password('correct horse')} bob={hash_password('x' * 8)}"})
    assert creds.check_password("alice", "correct horse") and not creds.check_password("alice", "x" * 8)
    assert not creds.check_password("mallory", "correct horse") and creds.token is None
    assert credentials(console, {"TOKEN": "t" * 20}).check_token("t" * 20)
    with pytest.raises(ConfigError, match="not name=<hash>"):
        credentials(console, {"ADMINS": "alice=md9$salt$beef"})             # no such method: found now, not at login
    assert any("plain HTTP" in w for w in missing_secrets(build_config({"console": {
        "address": "0.0.0.0:9465", "token_env": "TOKEN"}})))
    assert not any("plain HTTP" in w for w in missing_secrets(build_config({"console": {"address": "127.0.0.1:1"}})))
    assert not credentials(console, {"TOKEN": "t" * 20}).check_token("t" * 19)
