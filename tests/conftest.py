"""Fixtures: a database per test (SQLite always; PostgreSQL too where
``ACEDESK_TEST_DATABASE_URL`` is set, in its own schema), a private Dovecot
for the session, a capturing SMTP server, and a config pointing at them."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from daemon.config import Config, config_from_dict
from models.migrate import upgrade
from models.session import make_engine, make_sessionmaker
from tests.servers import IN_CI, Dovecot, SmtpCapture, find_dovecot, free_port, missing_service

DATA = Path(__file__).parent / "data"
PG_URL = os.environ.get("ACEDESK_TEST_DATABASE_URL", "")


def _backends() -> list[str]:
    return ["sqlite", "postgresql"]


@pytest.fixture(params=_backends())
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database URL: SQLite in tmp, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'acedesk.db'}"
        yield url
        return
    if not PG_URL:
        missing_service("PostgreSQL", "set ACEDESK_TEST_DATABASE_URL, e.g. "
                        "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, future=True)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # noqa: BLE001 - report any connection problem the same way
        admin.dispose()
        missing_service("PostgreSQL", f"cannot reach {PG_URL}: {exc}")
    url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return make_sessionmaker(engine)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite URL only, for tests that are about something other than the backend."""
    return f"sqlite:///{tmp_path / 'acedesk.db'}"


@pytest.fixture(scope="session")
def dovecot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dovecot]:
    binary = find_dovecot()
    if binary is None:
        missing_service("Dovecot", "install it with 'apt-get install dovecot-imapd' "
                        "(the README's test command does this when run as root)")
    # Not under pytest's tmp dir: that is 0700, and Dovecot's mail processes
    # run as the unprivileged ``mail`` user, who must reach the maildirs.
    root = Path(tempfile.mkdtemp(prefix="acedesk-dovecot-"))
    server = Dovecot(root=root, port=free_port(), binary=binary or "dovecot")
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def smtp_capture() -> Iterator[SmtpCapture]:
    server = SmtpCapture()
    server.start()
    yield server
    server.stop()


def make_config(tmp_path: Path, db_url: str, **sections: dict) -> Config:
    """Return a Config for tests: the given database, state in tmp, ingress and web on free ports."""
    # One configured CSMS signing secret, as PostgreSQL requires (instances must sign alike).
    secret = tmp_path / "csms.secret"
    if not secret.exists():
        secret.write_text("test-secret-" + uuid.uuid4().hex + "\n")
    raw: dict = {
        "csms": {"secret_file": str(secret)},
        "database": {"url": db_url},
        "daemon": {"state_dir": str(tmp_path / "var"), "shutdown_timeout": 5.0,
                   "restart_backoff_min": 0.1, "restart_backoff_max": 1.0},
        "ingress": {"port": free_port()},
        "web": {"listen": f"127.0.0.1:{free_port()}"},
        "outbound": {"spool_dir": str(tmp_path / "spool")},
        "pipeline": {"poll_interval": 0.2},
    }
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return config_from_dict(raw, base_dir=str(tmp_path))


@pytest.fixture
def config_factory(tmp_path: Path):
    """``config_factory(db_url, **sections)`` -> Config (see :func:`make_config`)."""
    return lambda db_url, **sections: make_config(tmp_path, db_url, **sections)


__all__ = ["IN_CI", "DATA"]
