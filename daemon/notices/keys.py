"""Where the CSMS signing secrets and the DKIM key come from, and the secrets' rotation.

One ring of secrets signs and checks every token and VERP address
(:class:`csms.tokens.Signer`): the first secret signs, the others are
previous ones still accepted, so links already sent survive a rotation.

* ``[csms] secret_file``: one secret a line, current first (a systemd
  credential, or a file that configuration management puts on every instance);
* ``[csms] secret_env``: the same, separated by spaces or commas, in an
  environment variable;
* neither: ``<state_dir>/csms.secret``, generated once (mode 0600).  That is
  one install's secret, so with PostgreSQL -- where several instances share
  the work and must sign alike -- a configured secret is required.

``acedesk secrets rotate`` puts a new secret on top of the file and keeps the
previous ones (``--keep``); each process re-reads the file when it changes
(:class:`KeyRing`), so every instance signs with the new secret within
seconds and accepts the old one meanwhile.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from pathlib import Path

from csms.dkim import DkimError, DkimKey
from csms.tokens import MIN_SECRET, Signer, key_id
from daemon.config import Config, ConfigError

GENERATED_FILE = "csms.secret"
#: Seconds between checks of the secret file for a rotation.
RECHECK_SECONDS = 2.0


def _split(text: str) -> list[bytes]:
    return [part.encode() for part in re.split(r"[\s,]+", text.strip()) if part]


def secret_path(config: Config) -> Path | None:
    """The file the secrets live in (configured or generated); None when they come from the environment."""
    cfg = config.csms
    if cfg.secret_env:
        return None
    if cfg.secret_file:
        return config.path(cfg.secret_file)
    return config.path(config.daemon.state_dir) / GENERATED_FILE


def _is_shared_database(config: Config) -> bool:
    return config.database.url.startswith("postgresql")


def read_secrets(config: Config) -> list[bytes]:
    """The ring's secrets, current first.

    Raises:
        ConfigError: unset variable, unreadable file, a secret shorter than 16 characters, or no
            configured secret on PostgreSQL.
    """
    cfg = config.csms
    if cfg.secret_env:
        value = os.environ.get(cfg.secret_env)
        if value is None:
            raise ConfigError(f"[csms] secret_env: environment variable {cfg.secret_env} is not set")
        keys = _split(value)
    elif cfg.secret_file:
        path = config.path(cfg.secret_file)
        try:
            keys = _split(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"[csms] secret_file: cannot read {path}: {exc.strerror}") from None
    else:
        if _is_shared_database(config):
            raise ConfigError("[csms] secret_env/secret_file: required with PostgreSQL, so that every instance "
                              "signs links alike (e.g. secret_file = \"/etc/acedesk/csms.secret\", made with "
                              "'openssl rand -hex 32')")
        keys = _split(_generated(config.path(config.daemon.state_dir) / GENERATED_FILE))
    if not keys or any(len(k) < MIN_SECRET for k in keys):
        raise ConfigError("[csms] secret_env/secret_file: each secret must be at least 16 characters")
    return keys


def _generated(path: Path) -> str:
    if not path.exists():
        _write_atomically(path, secrets.token_hex(32) + "\n", exclusive=True)
    return path.read_text(encoding="utf-8")


def _write_atomically(path: Path, text: str, exclusive: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    try:
        if exclusive:
            try:
                # link() fails if another process won the race: then everyone uses its secret.
                os.link(tmp, path)
            except FileExistsError:
                pass
        else:
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_signer(config: Config) -> Signer:
    """The signer of the configured ring, as it is now."""
    keys = read_secrets(config)
    return Signer(keys[0], keys[1:])


class KeyRing:
    """The signer for a long-running component, re-read when the secret file changes (a rotation)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.path = secret_path(config)
        self._signer = load_signer(config)
        self._stamp = self._mtime()
        self._checked = time.monotonic()

    def _mtime(self) -> float:
        try:
            return self.path.stat().st_mtime if self.path else 0.0
        except OSError:
            return 0.0

    # The ring stands in for a Signer wherever one is used (the web pages check and make tokens).
    def check(self, purpose: str, token: str, now: float | None = None) -> int:
        return self.signer().check(purpose, token, now)

    def make(self, purpose: str, subject: int, ttl_seconds: float, now: float | None = None) -> str:
        return self.signer().make(purpose, subject, ttl_seconds, now)

    def form_key(self, token: str) -> str:
        return self.signer().form_key(token)

    def check_form_key(self, token: str, value: str) -> bool:
        return self.signer().check_form_key(token, value)

    def parse_verp(self, address: str) -> tuple[int, int] | None:
        return self.signer().parse_verp(address)

    def signer(self) -> Signer:
        now = time.monotonic()
        if self.path is not None and now - self._checked >= RECHECK_SECONDS:
            self._checked = now
            stamp = self._mtime()
            if stamp != self._stamp:
                try:
                    self._signer = load_signer(self.config)
                    self._stamp = stamp
                except ConfigError:
                    pass  # a half-edited file: keep the ring we have, try again later
        return self._signer


def rotate(config: Config, keep: int) -> tuple[Path, str, list[str]]:
    """Put a new secret on top of the ring's file, keeping ``keep`` previous ones.

    Returns ``(file, new key id, key ids still accepted after it)``.

    Raises:
        ConfigError: the secrets come from an environment variable (rotate them there), or the
            file cannot be read.
    """
    path = secret_path(config)
    if path is None:
        raise ConfigError(f"[csms] secret_env: the secrets come from {config.csms.secret_env}; rotate them there: "
                          "put a new secret (openssl rand -hex 32) first and keep the old ones after it")
    old = read_secrets(config)
    new = secrets.token_hex(32).encode()
    ring = [new, *old[:max(0, keep)]]
    _write_atomically(path, "".join(k.decode() + "\n" for k in ring))
    return path, key_id(new), [key_id(k) for k in ring[1:]]


def dkim_key(config: Config) -> DkimKey | None:
    """The DKIM key of ``[csms] dkim_key_file`` (None: notices go unsigned).

    Raises:
        ConfigError: the key file is unreadable or not an RSA key of 1024 bits or more.
    """
    cfg = config.csms
    if not cfg.dkim_key_file:
        return None
    try:
        return DkimKey.load(config.path(cfg.dkim_key_file), cfg.dkim_domain or config.desk.domain,
                            cfg.dkim_selector)
    except DkimError as exc:
        raise ConfigError(f"[csms] dkim_key_file: {exc}") from None
