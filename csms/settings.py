"""The ``[csms]`` section of the configuration."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CsmsConfig:
    #: Public base URL of the unsubscribe / preferences endpoint (https in production).
    base_url: str = "http://127.0.0.1:8080"
    #: No longer used: the web server serves the unsubscribe pages on ``[web] listen``.
    #: Kept so that older config files still load.
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    #: Secrets of the signed links and VERP addresses: an environment variable (secrets separated
    #: by spaces or commas) or a file (one a line); the first signs, the others (rotated out) are
    #: still accepted.  Both empty: one generated in the state dir -- refused with PostgreSQL,
    #: where several instances must sign alike.  ``acedesk secrets rotate`` rotates the file.
    secret_env: str = ""
    secret_file: str = ""
    #: DKIM (RFC 6376): a PEM RSA private key that signs notices and control mail; empty: unsigned.
    dkim_key_file: str = ""
    #: The ``s=`` selector: the public key is published at ``<selector>._domainkey.<dkim_domain>``.
    dkim_selector: str = "csms"
    #: The ``d=`` domain; empty: ``[desk] domain``.
    dkim_domain: str = ""
    #: The first notice number this install allocates (numbers are never reused).
    number_start: int = 67800001
    #: Days a one-click unsubscribe link in a notice stays valid.
    unsubscribe_token_days: int = 365
    #: Hours a subscribe/unsubscribe confirmation stays valid.
    confirm_hours: int = 72
    #: Confirmation mails one address may be sent per day (the request address must not mail-bomb).
    confirmations_per_address_per_day: int = 3
    #: Confirmation mails sent in total per hour (a flood of forged requests stops here).
    confirmations_per_hour: int = 500
    #: Hard bounces within ``bounce_window_days`` that disable an address.
    bounce_threshold: int = 3
    bounce_window_days: int = 30
    #: Seconds between scheduler sweeps.
    scheduler_interval: float = 15.0
    #: A notice published this many seconds after its time is flagged late.
    late_after: float = 300.0
    #: Seconds the publishing lease on a notice lasts (renewed while it runs; a crash frees it).
    lease_seconds: float = 30.0
    #: SMTP connections the fan-out keeps open to the relay ([outbound] relay_host/port/tls), shared
    #: by its sender processes.
    connections: int = 8
    #: Sender processes one notice is fanned out by (each claims ``chunk_size`` deliveries at a
    #: time; a notice smaller than that many chunks gets fewer); 0 = one per core.
    fanout_processes: int = 0
    #: Notice messages per second at most (0: as fast as the relay takes them).
    rate_per_second: float = 0.0
    #: Notice messages per sliding hour at most (0: no cap).
    hourly_cap: int = 0
    #: Backoff of a recipient after a temporary failure (4xx, connection lost): doubles from
    #: ``retry_min`` up to ``retry_max`` seconds; after ``give_up_hours`` the delivery fails.
    retry_min: float = 60.0
    retry_max: float = 3600.0
    give_up_hours: float = 48.0
    #: Deliveries a sender claims at a time while fanning out.
    chunk_size: int = 1000
    #: Seconds between commits of delivery results: the most a kill can resend is what
    #: was in flight plus this much sending.
    mark_interval: float = 0.05
    #: Topics created by ``acedesk db upgrade``'s first CSMS use (and listed by ``acedesk csms topics``).
    default_topics: list[str] = field(default_factory=lambda: [
        "ACE", "ACE Portal", "ACH Refunds", "Cargo Release", "Entry Summary", "Export", "Manifest",
        "Partner Government Agencies", "Trade Policy"])
    #: Hours of the morning (ET) at which derived reminders go out.
    reminder_hour: int = 8
    #: Folder of the static archive, relative to the state dir.
    archive_dir: str = "csms-archive"
