"""What the benchmarks share: progress lines on stderr, filling a private
Dovecot mailbox, a throw-away PostgreSQL schema, and Postfix's smtp-sink.

Benchmarks are run by hand from the repository root; they are not tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from tests.servers import Dovecot, wait_for_port  # noqa: E402

APPEND_CONNECTIONS = 4
APPEND_CHUNK = 250


def progress(line: str) -> None:
    """Print a progress line on stderr (stdout's last line is the JSON figures)."""
    print(line, file=sys.stderr, flush=True)


def fill(server: Dovecot, user: str, count: int, message: Callable[[int, str], bytes]) -> float:
    """Append ``count`` messages (``message(n, run)``) to ``user``'s INBOX over several
    connections with MULTIAPPEND; return msgs/s."""
    run = uuid.uuid4().hex[:8]
    started = time.perf_counter()
    errors: list[BaseException] = []

    def worker(part: int) -> None:
        try:
            client = server.client(user)
            numbers = list(range(part, count, APPEND_CONNECTIONS))
            for start in range(0, len(numbers), APPEND_CHUNK):
                client.multiappend("INBOX", [message(n, run) for n in numbers[start:start + APPEND_CHUNK]])
            client.logout()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(APPEND_CONNECTIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return count / (time.perf_counter() - started)


def postgres_schema(base: str) -> tuple[str, str]:
    """Return (a URL on ``base`` whose search_path is a fresh schema, the schema)."""
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    admin.dispose()
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False), schema


def bench_database(root: Path, postgres: str) -> tuple[str, str]:
    """Return (the bench's database URL, its PostgreSQL schema or ""): a fresh schema on
    ``postgres`` when given (drop it with :func:`drop_schema`), else a fresh SQLite file in ``root``."""
    if postgres:
        return postgres_schema(postgres)
    return f"sqlite:///{root / 'acedesk.db'}", ""


def signing_secret(root: Path) -> Path:
    """Write a random signing secret under ``root`` and return its path: production configures
    one, and PostgreSQL requires it (every instance must sign CSMS links alike)."""
    secret = root / "signing.secret"
    secret.write_text(os.urandom(32).hex())
    return secret


def clean_up(sink: subprocess.Popen[bytes], root: Path, postgres: str, schema: str) -> None:
    """Stop smtp-sink, remove the bench's directory and drop its PostgreSQL schema, if any."""
    sink.terminate()
    sink.wait(10)
    shutil.rmtree(root, ignore_errors=True)
    if schema:
        drop_schema(postgres, schema)


def drop_schema(base: str, schema: str) -> None:
    """Drop a schema made by :func:`postgres_schema`."""
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


def smtp_sink_binary() -> str | None:
    """Return the path of Postfix's smtp-sink, or None (``apt-get install postfix``)."""
    found = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    return found if os.path.exists(found) else None


def start_smtp_sink(binary: str, port: int, backlog: int = 1000,
                    counter: Path | None = None) -> subprocess.Popen[bytes]:
    """Start smtp-sink on 127.0.0.1:``port`` and wait until it listens.

    With ``counter``, smtp-sink (``-c``) writes its message counter there: a file, not a pipe,
    because a pipe nobody reads fills up and stalls the sink.
    """
    # smtp-sink refuses to run as root without -u (it drops privileges to that user).
    user_opt = ["-u", "nobody"] if os.geteuid() == 0 else []
    count_opt = ["-c"] if counter is not None else []
    with open(counter or os.devnull, "wb") as out:
        sink = subprocess.Popen([binary, *user_opt, *count_opt, f"127.0.0.1:{port}", str(backlog)],
                                stdout=out, stderr=subprocess.DEVNULL)
    wait_for_port(port)
    return sink
