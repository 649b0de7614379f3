"""Shared fixtures: a throw-away SoftHSM token per session, databases on SQLite and PostgreSQL.

Nothing here is mocked: tokens are real SoftHSM tokens, databases are real
SQLite files and real PostgreSQL databases created for the test and dropped
after it.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.hsm import softhsm
from appliance.hsm.pool import SessionPool
from appliance.hsm.profile import HsmProfile
from appliance.store import migrate
from appliance.store.db import Database

PG_ADMIN_URL = os.environ.get(
    "APPLIANCE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@dataclass
class TestToken:
    """A SoftHSM token made for the tests, with its (throw-away) PINs."""

    __test__ = False

    directory: Path
    conf: Path
    label: str
    user_pin: str
    so_pin: str
    pin_file: Path

    def profile(self, **overrides: object) -> HsmProfile:
        data: dict[str, object] = {
            "name": f"test-{self.label}",
            "module": str(softhsm.find_module()),
            "token": {"label": self.label},
            "pin": {"file": str(self.pin_file)},
            "pool_size": 4,
            "module_env": {"SOFTHSM2_CONF": str(self.conf)},
        }
        data.update(overrides)
        return HsmProfile.model_validate(data)

    def write_pin_file(self, name: str, pin: str) -> Path:
        path = self.directory / name
        path.write_text(pin + "\n")
        path.chmod(0o600)
        return path


def make_token(directory: Path, conf: Path, label: str) -> TestToken:
    so_pin, user_pin = softhsm.new_pin(), softhsm.new_pin()
    softhsm.init_token(conf, label, so_pin, user_pin)
    tok = TestToken(directory, conf, label, user_pin, so_pin, directory / f"{label}.pin")
    tok.write_pin_file(f"{label}.pin", user_pin)
    return tok


SPARE_TOKENS = 6


@dataclass
class TokenStore:
    directory: Path
    conf: Path
    main: TestToken
    spares: list[TestToken]


@pytest.fixture(scope="session")
def softhsm_store(tmp_path_factory: pytest.TempPathFactory) -> TokenStore:
    """One SoftHSM store per test session, with every token made up front: SoftHSM reads
    its tokens once, at C_Initialize, so a token made later is invisible to this process."""
    directory = tmp_path_factory.mktemp("softhsm")
    conf = softhsm.write_config(directory)
    os.environ["SOFTHSM2_CONF"] = str(conf)
    main = make_token(directory, conf, "test-main")
    spares = [make_token(directory, conf, f"spare-{i}") for i in range(SPARE_TOKENS)]
    return TokenStore(directory, conf, main, spares)


@pytest.fixture(scope="session")
def token(softhsm_store: TokenStore) -> TestToken:
    return softhsm_store.main


@pytest.fixture(scope="session")
def new_token(softhsm_store: TokenStore):  # type: ignore[no-untyped-def]
    """Hands out a fresh token of its own to each test that wrecks a token's state."""

    def factory(_purpose: str = "") -> TestToken:
        if not softhsm_store.spares:
            raise RuntimeError("no spare test tokens left; raise SPARE_TOKENS")
        return softhsm_store.spares.pop()

    return factory


@pytest.fixture(scope="session")
def pool(token: TestToken) -> Iterator[SessionPool]:
    p = SessionPool(token.profile())
    yield p
    p.close()


def unique_label(prefix: str = "k") -> str:
    return f"{prefix}-{secrets.token_hex(6)}"


# -- databases ---------------------------------------------------------------


def _pg_available() -> bool:
    try:
        import psycopg

        url = PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(url, connect_timeout=3):
            return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def pg_available() -> bool:
    return _pg_available()


def create_pg_database() -> str:
    """A new, empty PostgreSQL database; returns its SQLAlchemy URL."""
    import psycopg

    name = f"appliance_test_{secrets.token_hex(6)}"
    admin = PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def drop_pg_database(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    admin = PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def require_pg(available: bool) -> None:
    if not available:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI but does not answer at {PG_ADMIN_URL}")
        pytest.skip(f"PostgreSQL does not answer at {PG_ADMIN_URL}")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, pg_available: bool) -> Iterator[str]:
    """An empty database URL, once per backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    require_pg(pg_available)
    url = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(url)


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    """A migrated database on each backend."""
    database = Database(db_url)
    migrate.upgrade(database)
    yield database
    database.dispose()


# -- the CLI as a user runs it ---------------------------------------------------


def operator_spec(data_dir: Path, name: str = "operator-1") -> str:
    """``NAME=SECRET_FILE`` of the trial operator ``quickstart --fips`` registers (operator
    commands on a FIPS node need it: --operator, or $APPLIANCE_OPERATOR)."""
    return f"{name}={data_dir / 'secrets' / f'{name}.secret'}"


def run_cli(*args: str, env: dict[str, str] | None = None, input: str | None = None,
            check: bool = False, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``appliance ARGS`` in a new process, as an operator would."""
    full_env = dict(os.environ)
    full_env.pop("SOFTHSM2_CONF", None)  # the data directory's profile names its own store
    if env:
        full_env.update(env)
    proc = subprocess.run(
        [sys.executable, "-m", "appliance", *args], capture_output=True, text=True,
        env=full_env, input=input, timeout=300, cwd=cwd, check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"appliance {' '.join(args)} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc
