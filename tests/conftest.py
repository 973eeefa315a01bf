import os
import pwd
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import host  # noqa: E402  (first: it points GREYLIST_TEST_ETC, which every child inherits, at ETC)
from helpers import write_control  # noqa: E402
from pgserver import PostgresServer, from_environment, server_binaries  # noqa: E402

from greylist.stores import ALL_TABLES  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def the_tests_own_etc():
    """In this process too, courier.config reads the tests' etc, never the host's (host.py)."""
    import courier.config

    host.make_courier_layout()
    saved = courier.config._standard_config_paths, courier.config.sysconfdir, courier.config.localstatedir
    courier.config._standard_config_paths = [host.standard_config()]
    courier.config.sysconfdir = os.path.join(host.ETC, "courier")
    courier.config.localstatedir = host.SPOOL
    yield
    courier.config._standard_config_paths, courier.config.sysconfdir, courier.config.localstatedir = saved
    shutil.rmtree(host.ETC, ignore_errors=True)


@pytest.fixture(autouse=True)
def the_tests_own_courier(request, monkeypatch):
    """Every program a test starts asks the tests' courier-config (host.py); tests/e2e asks the host's."""
    if request.node.get_closest_marker("e2e") is None:
        monkeypatch.setenv("PATH", f"{host.COURIER_BIN}:{os.environ['PATH']}")


@pytest.fixture(scope="session")
def server():
    """A PostgreSQL server for the session: GREYLIST_TEST_PG's, or one started here."""
    if from_environment():
        yield None
        return
    if server_binaries() is None:
        if os.environ.get("CI"):
            pytest.fail("CI must test the PostgreSQL store: install postgresql")
        pytest.skip("no PostgreSQL server binaries here (apt-get install postgresql)")
    pg = PostgresServer()
    yield pg
    pg.close()


@pytest.fixture
def conninfo(server):
    """Connection settings of an empty greylisting database."""
    psycopg = pytest.importorskip("psycopg")
    info = from_environment() or server.conninfo()
    with psycopg.connect(host=info["host"], port=info["port"], dbname=info["db"], user=info["user"],
                         password=info["password"], autocommit=True) as conn:
        # Connections a previous test left open would hold their table locks.
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        conn.execute("SET lock_timeout = '10s'")
        for table in ALL_TABLES:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
    return info


@pytest.fixture
def beside_nobody():
    """As root: a store directory and a control file under /tmp that the nobody user can reach.

    pytest's own tmp_path is root's alone.  Yields (store, control, nobody).
    """
    if os.geteuid() != 0:
        pytest.skip("needs root")
    base = Path(tempfile.mkdtemp(prefix="greylist-root-test-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        store = base / "store"
        store.mkdir()
        control = write_control(str(base / "C"))
        os.chmod(control, 0o644)
        yield store, control, pwd.getpwnam("nobody")
    finally:
        shutil.rmtree(base)
