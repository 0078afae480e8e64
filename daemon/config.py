"""The configuration: ``config.toml`` loaded once into one validated, typed object.

Every section is a frozen dataclass whose defaults are the documented defaults.
:func:`load_config` rejects unknown keys and wrong types with one line that
names the key and what was expected (:class:`ConfigError`), resolves relative
paths against the config file's folder, and applies the environment
overrides (``ACEDESK_DATABASE_URL``).  Secrets never live in the TOML: a
section names an environment variable or a file that holds them
(:func:`read_secret`).

Sections owned by other packages (classifier, responders, csms) define their
own dataclasses next to the code that uses them; this module only composes
them.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import secrets
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from classifiers.settings import ClassifierConfig
from csms.settings import CsmsConfig
from responders.escalation import EscalationConfig
from responders.hours import HoursConfig
from responders.incidents import IncidentConfig
from daemon.web.settings import WebConfig
from responders.settings import ResponderConfig

DEFAULT_CONFIG_NAME = "config.toml"


class ConfigError(Exception):
    """The configuration is missing, malformed, or has a wrong key or value."""


@dataclass(frozen=True)
class DatabaseConfig:
    #: SQLAlchemy URL. ``sqlite:///var/acedesk.db`` is relative to the config file.
    url: str = "sqlite:///var/acedesk.db"
    #: Pool size for server databases (ignored for SQLite).
    pool_size: int = 5
    echo: bool = False


@dataclass(frozen=True)
class LoggingConfig:
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: ``text`` for people at a terminal or journald, ``json`` for log shippers.
    format: Literal["text", "json"] = "text"


@dataclass(frozen=True)
class DeskConfig:
    """The desk's own addresses: where mail is accepted, and what is ours."""

    domain: str = "ace-support.example"
    #: Help-desk addresses; mail to them is ingested and answered.  The
    #: language is a hint for the reply when the message's own is unclear.
    helpdesk_addresses: list[str] = field(
        default_factory=lambda: ["helpdesk@ace-support.example", "ayuda@ace-support.example"]
    )
    spanish_addresses: list[str] = field(default_factory=lambda: ["ayuda@ace-support.example"])
    csms_request_address: str = "csms-request@ace-support.example"
    csms_from_address: str = "csms@ace-support.example"
    #: Return path of CSMS notices; each recipient gets ``<local>+<token>@<domain>`` (VERP).
    bounce_address: str = "csms-bounces@ace-support.example"
    #: Address replies are sent from (and that bounces come back to).
    reply_from_address: str = "helpdesk@ace-support.example"
    #: Every address that is ours: never answered, recognised as loops.
    own_addresses: list[str] = field(default_factory=list)

    def accepted_addresses(self) -> list[str]:
        return [a.lower() for a in (*self.helpdesk_addresses, self.csms_request_address, self.bounce_address)]

    def accepts(self, address: str) -> bool:
        """Return whether mail to ``address`` is ours to take (a desk, or a VERP bounce address)."""
        address = address.lower()
        if address in self.accepted_addresses():
            return True
        local, _, domain = address.rpartition("@")
        b_local, _, b_domain = self.bounce_address.lower().rpartition("@")
        return domain == b_domain and local.startswith(b_local + "+")

    def is_bounce_address(self, address: str) -> bool:
        local, _, domain = address.lower().rpartition("@")
        b_local, _, b_domain = self.bounce_address.lower().rpartition("@")
        return domain == b_domain and (local == b_local or local.startswith(b_local + "+"))

    def all_own_addresses(self) -> set[str]:
        own = {a.lower() for a in self.own_addresses}
        own.update(self.accepted_addresses())
        own.add(self.csms_from_address.lower())
        own.add(self.reply_from_address.lower())
        return own


@dataclass(frozen=True)
class DaemonConfig:
    #: Folder for state the daemon writes (spool, archive, sockets); relative to the config file.
    state_dir: str = "var"
    #: Seconds SIGTERM waits for in-flight work before cancelling it.
    shutdown_timeout: float = 10.0
    #: First and last wait, in seconds, before a crashed component is restarted.
    restart_backoff_min: float = 1.0
    restart_backoff_max: float = 60.0
    #: Name of this instance in leases and the audit log; empty = host:pid.
    instance_name: str = ""


@dataclass(frozen=True)
class IngressConfig:
    """The SMTP or LMTP listener (aiosmtpd)."""

    enabled: bool = True
    protocol: Literal["smtp", "lmtp"] = "smtp"
    host: str = "127.0.0.1"
    port: int = 8025
    #: Largest message accepted, in bytes; larger ones get 552.
    max_message_size: int = 25 * 1024 * 1024
    #: Seconds a client may stay idle before it is disconnected.
    timeout: float = 300.0
    #: The name this server writes after ``by`` in the ``Received:`` line it prepends to every message.
    hostname: str = "acedesk.ace-support.example"
    #: This listener is the border (mail comes straight from the Internet): nothing below its
    #: ``Received:`` line is trusted, so no Authentication-Results a client writes can verify anyone.
    border: bool = False


@dataclass(frozen=True)
class MailboxConfig:
    """One IMAP mailbox that one watcher reads."""

    name: str
    host: str
    username: str
    #: The desk address this mailbox serves (duplicates are per desk).
    desk: str = "helpdesk@ace-support.example"
    port: int = 993
    #: ``implicit`` (IMAPS), ``starttls`` (refuses to go on in plaintext if it fails) or ``none`` (loopback tests only).
    tls: Literal["implicit", "starttls", "none"] = "implicit"
    verify_certificates: bool = True
    ca_file: str = ""
    #: Secret: the name of an environment variable, or a file, holding the password.
    password_env: str = ""
    password_file: str = ""
    folder: str = "INBOX"
    processed_folder: str = "acedesk/processed"
    #: Move stored messages on a second connection while the first goes on fetching (a
    #: refused second login falls back to one connection by itself).
    second_connection: bool = True
    #: UIDs fetched per FETCH command.
    batch_size: int = 500
    #: Seconds before IDLE is renewed (servers drop it after 30 minutes; RFC 2177 says renew within 29).
    idle_timeout: float = 600.0
    #: Seconds between polls when the server lacks IDLE.
    poll_interval: float = 30.0
    #: Seconds any single IMAP command may take.
    command_timeout: float = 60.0
    #: Seconds the mailbox lease is held; renewed while the watcher runs.
    lease_seconds: float = 60.0


@dataclass(frozen=True)
class ImapConfig:
    mailboxes: list[MailboxConfig] = field(default_factory=list)


@dataclass(frozen=True)
class PipelineConfig:
    #: Messages claimed per stage per transaction.
    batch_size: int = 200
    #: A message that fails this many times goes to the ``failed`` state for an operator.
    max_attempts: int = 5
    #: Seconds between sweeps when nothing wakes the worker.
    poll_interval: float = 2.0
    #: Worker processes running the CPU stages (parse, classify, respond); 0 = one per core.
    processes: int = 0
    #: Per-message budget of a stage, in seconds: a message that takes longer is quarantined
    #: (``over_time_budget``) rather than retried.
    message_seconds: float = 10.0
    #: Per-message memory budget of parsing, in bytes: a message whose parse would need more
    #: (about 16 bytes per byte of message, measured) is quarantined (``over_memory_budget``).
    message_memory: int = 512 * 1024 * 1024

    def worker_processes(self) -> int:
        """Return how many worker processes ``acedesk run`` starts."""
        return self.processes if self.processes > 0 else (os.cpu_count() or 1)


@dataclass(frozen=True)
class OutboundConfig:
    """How mail leaves: an SMTP relay, or a local spool folder when none is set."""

    #: Relay host; empty means write outgoing mail to ``spool_dir`` so nothing is lost.
    relay_host: str = ""
    relay_port: int = 25
    #: ``none``, ``starttls`` (required when set) or ``implicit``.
    tls: Literal["none", "starttls", "implicit"] = "none"
    verify_certificates: bool = True
    username: str = ""
    password_env: str = ""
    password_file: str = ""
    timeout: float = 30.0
    #: Concurrent SMTP connections.
    connections: int = 4
    #: Messages per second across all connections (0 = unlimited).
    rate_per_second: float = 0.0
    #: Messages per sliding hour (0 = unlimited).
    hourly_cap: int = 0
    #: First and last retry delay in seconds for 4xx and connection errors.
    retry_min: float = 30.0
    retry_max: float = 3600.0
    #: Give up (a permanent failure) after this many hours of temporary failures.
    give_up_hours: float = 72.0
    spool_dir: str = "var/spool"


@dataclass(frozen=True)
class Config:
    """The whole configuration; each component is handed only its own section."""

    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    desk: DeskConfig = field(default_factory=DeskConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    ingress: IngressConfig = field(default_factory=IngressConfig)
    imap: ImapConfig = field(default_factory=ImapConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    outbound: OutboundConfig = field(default_factory=OutboundConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    responders: ResponderConfig = field(default_factory=ResponderConfig)
    csms: CsmsConfig = field(default_factory=CsmsConfig)
    web: WebConfig = field(default_factory=WebConfig)
    #: The desk's duties: opening hours, outage incidents (War Room), escalation.
    hours: HoursConfig = field(default_factory=HoursConfig)
    incidents: IncidentConfig = field(default_factory=IncidentConfig)
    escalation: EscalationConfig = field(default_factory=EscalationConfig)
    #: Folder of the config file; relative paths are resolved against it.
    base_dir: str = "."

    def path(self, value: str) -> Path:
        """Return ``value`` as a path, relative ones resolved against the config's folder."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else Path(self.base_dir) / p


def find_config_path(explicit: str | None) -> Path:
    """Return the config path from the flag, ``ACEDESK_CONFIG``, or ``./config.toml``."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("ACEDESK_CONFIG")
    if env:
        return Path(env)
    return Path(DEFAULT_CONFIG_NAME)


def load_config(path: str | Path | None = None, env: typing.Mapping[str, str] | None = None) -> Config:
    """Read, validate and return the configuration at ``path``.

    Raises:
        ConfigError: one line naming the file, the key and what was expected.
    """
    env = os.environ if env is None else env
    cfg_path = find_config_path(str(path) if path else None)
    try:
        raw = tomllib.loads(cfg_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{cfg_path}: no such config file (set --config or ACEDESK_CONFIG)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{cfg_path}: not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{cfg_path}: cannot read: {exc}") from None
    if "base_dir" in raw:
        raise ConfigError(f"{cfg_path}: unknown key 'base_dir'")
    raw["base_dir"] = str(cfg_path.resolve().parent)
    try:
        cfg = build_section(Config, raw, "")
    except ConfigError as exc:
        raise ConfigError(f"{cfg_path}: {exc}") from None
    return apply_environment(cfg, env)


def config_from_dict(raw: dict[str, Any], base_dir: str = ".") -> Config:
    """Build a :class:`Config` from a dict shaped like the TOML (tests, tools)."""
    return build_section(Config, {**raw, "base_dir": base_dir}, "")


def apply_environment(cfg: Config, env: typing.Mapping[str, str]) -> Config:
    """Apply the documented environment overrides."""
    url = env.get("ACEDESK_DATABASE_URL")
    if url:
        cfg = dataclasses.replace(cfg, database=dataclasses.replace(cfg.database, url=url))
    return cfg


def read_secret(section: str, env_name: str, file_name: str, base: Config | None = None, *,
                env_key: str = "password_env", file_key: str = "password_file") -> str:
    """Return a secret from the environment variable or file a section names.

    Raises:
        ConfigError: the variable is unset or the file unreadable, naming the key.
    """
    if env_name:
        value = os.environ.get(env_name)
        if value is None:
            raise ConfigError(f"[{section}] {env_key}: environment variable {env_name} is not set")
        return value
    if file_name:
        path = base.path(file_name) if base else Path(file_name)
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"[{section}] {file_key}: cannot read {path}: {exc.strerror}") from None
    return ""


def signing_secret(config: Config, section: str, env_name: str, file_name: str, generated: str) -> bytes:
    """Return a signing key: from ``secret_env``/``secret_file`` of ``section``, else one
    generated once as ``<state_dir>/<generated>`` (mode 0600) and shared by every process
    of this install.

    Raises:
        ConfigError: a configured secret is unreadable or shorter than 16 characters.
    """
    if env_name or file_name:
        value = read_secret(section, env_name, file_name, config, env_key="secret_env", file_key="secret_file")
        if len(value) < 16:
            raise ConfigError(f"[{section}] secret_env/secret_file: the secret must be at least 16 characters")
        return value.encode()
    path = config.path(config.daemon.state_dir) / generated
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_hex(32).encode())
            fh.flush()
            os.fsync(fh.fileno())
        try:
            # link() fails if another process won the race: then everyone uses its secret.
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    return path.read_bytes().strip()


# --- the validating builder -------------------------------------------------

_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def build_section(cls: type, raw: Any, where: str) -> Any:
    """Build dataclass ``cls`` from ``raw``, checking every key and type."""
    label = f"[{where}]" if where else "top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{label}: expected a table, got {_describe(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            near = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            name = f"{where}.{key}" if where else key
            raise ConfigError(f"unknown key '{name}'{hint}")
    kwargs = {}
    for name, f in fields.items():
        key_path = f"{where}.{name}" if where else name
        if name in raw:
            kwargs[name] = _convert(hints[name], raw[name], key_path)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing key '{key_path}'")
    try:
        return cls(**kwargs)
    except ValueError as exc:  # a section's own check of its values (__post_init__)
        raise ConfigError(f"{label}: {exc}") from None


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return build_section(tp, value, key)
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"'{key}': expected one of {choices}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in args:
            if arg is type(None):
                if value is None:
                    return None
                continue
            try:
                return _convert(arg, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"'{key}': unexpected value {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"'{key}': expected a list, got {_describe(value)}")
        return [_convert(args[0], item, f"{key}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"'{key}': expected a table, got {_describe(value)}")
        return {str(k): _convert(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"'{key}': expected a number, got {_describe(value)}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"'{key}': expected an integer, got {_describe(value)}")
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise ConfigError(f"'{key}': expected {_TYPE_NAMES[tp]}, got {_describe(value)}")
        return value
    if tp is Any:
        return value
    raise ConfigError(f"'{key}': unsupported type {tp}")  # a programming error, named anyway


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__
