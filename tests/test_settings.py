import pytest

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
