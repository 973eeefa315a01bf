import os
import re

import pytest

import greylist.settings as greylist_settings
from greylist.settings import Settings, SettingsError, load_settings, parse_value


def write(tmp_path, text, name="modules.conf"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_defaults_without_files(tmp_path):
    s = load_settings([str(tmp_path / "missing.conf")])
    assert s == Settings()
    assert s.greylist_time == 300 and s.senders_passed_ttl == 36 * 86400
    assert s.db_type == "dbm" and s.db_dir == "/var/lib/pythonfilter"


def test_both_spellings_and_arithmetic(tmp_path):
    path = write(tmp_path, "[greylist.py]\nsendersPassedTTL = 60 * 60 * 24 * 10\n"
                           "greylist_time = 2 ** 4 + 1\nsenders_not_passed_ttl=3600.5\n"
                           "sendersPurgeInterval = -(-60)\n"
                           "[ttldb]\ntype = 'dbm'\ndir = '/srv/' + 'grey'\n")
    s = load_settings([path])
    assert s.senders_passed_ttl == 864000 and s.greylist_time == 17
    assert s.senders_not_passed_ttl == 3600.5 and s.senders_purge_interval == 60
    assert s.db_dir == "/srv/grey" and s.sources == (path,)


def test_later_file_wins(tmp_path):
    first = write(tmp_path, "[greylist.py]\ngreylist_time = 10\n", "a.conf")
    second = write(tmp_path, "[greylist.py]\ngreylistTime = 20\n", "b.conf")
    assert load_settings([first, second]).greylist_time == 20


@pytest.mark.parametrize(
    "value, problem",
    [
        ("__import__('os').system('true')", "not a literal"),
        ("open('/etc/passwd')", "not a literal"),
        ("'300'", "expected a number"),
        ("-5", "0 seconds or more"),
        ("True", "expected a number"),
        ("1 / 0", "division by zero"),
        ("10 ** 100000", "exponent too large"),
        ("[1, 2", "not a Python literal"),
    ],
)
def test_bad_values_name_file_section_key(tmp_path, value, problem):
    path = write(tmp_path, f"[greylist.py]\ngreylist_time = {value}\n")
    with pytest.raises(SettingsError) as caught:
        load_settings([path])
    message = str(caught.value)
    assert message.startswith(f"{path}: [greylist.py] greylist_time: ")
    assert problem in message
    assert "\n" not in message


def test_unknown_key_warns(tmp_path):
    path = write(tmp_path, "[greylist.py]\ngreylist_tme = 5\n[other.py]\nfoo = bar(\n")
    lines = []
    s = load_settings([path], warn=lines.append)
    assert s.greylist_time == 300
    assert lines == [f"greylist: {path}: [greylist.py] greylist_tme: unknown setting, ignored (a typo?)"]


def test_broken_file_is_refused(tmp_path):
    path = write(tmp_path, "greylist_time = 5\n")
    with pytest.raises(SettingsError, match="not a valid configuration file"):
        load_settings([path])


def test_unsupported_store_type(tmp_path):
    path = write(tmp_path, "[ttldb]\ntype = 'mysql'\n")
    with pytest.raises(SettingsError, match=r"\[ttldb\] type: .*not supported"):
        load_settings([path])


def test_honours_courier_config_standard_paths(tmp_path, monkeypatch):
    import courier.config

    path = write(tmp_path, "[greylist.py]\ngreylist_time = 42\n")
    monkeypatch.setattr(courier.config, "_standard_config_paths", [path])
    assert load_settings().greylist_time == 42


def test_parse_value_literals():
    assert parse_value("[1, 'a', (2, 3)]") == [1, "a", (2, 3)]
    assert parse_value("{'a': None}") == {"a": None}
    with pytest.raises(ValueError):
        parse_value("x")


def test_issue6_settings_parse(tmp_path):
    path = write(tmp_path, "[greylist.py]\n"
                 "whitelist_clients = ['192.0.2.0/24', '.outlook.com', '2001:db8::/32']\n"
                 "whitelist_senders = ['@lists.example.org']\n"
                 "whitelist_recipients = ['postmaster@', 'abuse@']\n"
                 "whitelist_files = ['builtin:pool-senders', '/etc/courier/greylist-whitelist']\n"
                 "auto_whitelist_clients = 5\nnormalize_senders = True\nspf_triplets = True\n"
                 "skip_authenticated = True\nskip_relayclients = True\nlearn_only = True\n"
                 "smtpaccess_file = '/etc/courier/smtpaccess.dat'\n")
    s = load_settings([path])
    assert s.whitelist_clients == ("192.0.2.0/24", ".outlook.com", "2001:db8::/32")
    assert s.whitelist_recipients == ("postmaster@", "abuse@")
    assert s.auto_whitelist_clients == 5
    assert s.normalize_senders and s.spf_triplets and s.skip_authenticated and s.skip_relayclients
    assert s.learn_only and s.smtpaccess_file == "/etc/courier/smtpaccess.dat"


def test_issue6_defaults_are_the_reference():
    s = Settings()
    assert (s.whitelist_clients, s.whitelist_senders, s.whitelist_recipients, s.whitelist_files) == ((),) * 4
    assert s.auto_whitelist_clients == 0
    assert not (s.normalize_senders or s.spf_triplets or s.skip_authenticated or s.skip_relayclients
                or s.learn_only)


@pytest.mark.parametrize("line, problem", [
    ("whitelist_clients = ['not a host']", "whitelist_clients: 'not a host' is not an IP address"),
    ("whitelist_clients = [42]", "whitelist_clients: expected a list of strings"),
    ("whitelist_senders = ['postmaster@']", "whitelist_senders: 'postmaster@': a sender entry needs"),
    ("whitelist_files = ['']", "whitelist_files: expected a list of file paths"),
    ("auto_whitelist_clients = -1", "auto_whitelist_clients: expected a whole number"),
    ("auto_whitelist_clients = 2.5", "auto_whitelist_clients: expected a whole number"),
    ("learn_only = 'yes'", "learn_only: expected True or False"),
    ("reply = '250 ok {wait}'", "reply: expected a one-line 4xx SMTP reply"),
    ("reply = '450 {when}'", "reply: only {wait} may be used"),
])
def test_issue6_bad_values(tmp_path, line, problem):
    path = write(tmp_path, f"[greylist.py]\n{line}\n")
    with pytest.raises(SettingsError, match=re.escape(problem)):
        load_settings([path])


def test_example_file_defaults_and_recommendations(tmp_path):
    example = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "greylist.conf.example")
    text = open(example).read()
    assert load_settings([example]) == Settings(sources=(example,))  # the defaults, as documented
    keys = re.findall(r"^#?(\w+) = ", text, re.MULTILINE)
    assert len(keys) == len(set(keys)), "a setting appears twice: uncommenting would duplicate it"
    greylist_keys = {key for key in greylist_settings._GREYLIST_KEYS if key == key.lower()}
    assert greylist_keys | set(greylist_settings._TTLDB_KEYS) == set(keys)
    # Uncommenting every line gives a file that loads: the recommendations, and the
    # PostgreSQL keys (ignored while type is 'dbm').
    everything = write(tmp_path, re.sub(r"^#(\w+ = )", r"\1", text, flags=re.MULTILINE))
    s = load_settings([everything])
    assert s.auto_whitelist_clients == 5 and s.normalize_senders and s.skip_relayclients
    assert "builtin:pool-senders" in s.whitelist_files and s.reply.startswith("450 4.2.0")
    assert s.db_type == "dbm" and s.db_timeout == 5


@pytest.mark.parametrize("line, advice", [
    ("learn_only = yes", "learn_only: write True (with a capital letter), not yes"),
    ("learn_only = false", "learn_only: write False (with a capital letter), not false"),
    ("whitelist_clients = 192.0.2.0/24", "whitelist_clients: put it in quotes: '192.0.2.0/24'"),
    ("reply = tempfail", "put it in quotes: 'tempfail'"),
])
def test_values_a_postmaster_writes_get_advice(tmp_path, line, advice):
    path = write(tmp_path, f"[greylist.py]\n{line}\n")
    with pytest.raises(SettingsError, match=re.escape(advice)):
        load_settings([path])


def test_unquoted_path_in_ttldb_gets_advice(tmp_path):
    path = write(tmp_path, "[ttldb]\ntype = 'dbm'\ndir = /var/lib/pythonfilter\n")
    with pytest.raises(SettingsError, match=re.escape("dir: put it in quotes: '/var/lib/pythonfilter'")):
        load_settings([path])


def test_a_misspelt_section_is_warned_about(tmp_path):
    path = write(tmp_path, "[greylist]\ngreylist_time = 20\n[TTLdb]\ndir = '/x'\n"
                           "[whitelist_auth.py]\nx = 1\n")
    warnings: list = []
    settings = load_settings([path], warn=warnings.append)
    assert settings.greylist_time == 300  # ignored, as the reference would
    assert warnings == [
        f"greylist: {path}: [greylist] looks like [greylist.py], which this filter reads; "
        f"its settings are ignored",
        f"greylist: {path}: [TTLdb] looks like [ttldb], which this filter reads; its settings are ignored",
    ]
