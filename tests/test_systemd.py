"""The unit file keeps the promises operators rely on."""

from pathlib import Path

UNIT = (Path(__file__).parents[1] / "systemd" / "acedesk.service").read_text()


def settings() -> dict[str, str]:
    pairs = {}
    for line in UNIT.splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            pairs[key.strip()] = value.strip()
    return pairs


def test_unit_is_notify_with_watchdog_restart_dedicated_user_and_hardening():
    s = settings()
    assert s["Type"] == "notify" and int(s["WatchdogSec"]) > 0
    assert s["Restart"] == "on-failure"
    # A dedicated user that exists: the sysusers entry creates the one the unit names.
    assert s["User"] == "acedesk"
    sysusers = [line.split() for line in (Path(__file__).parents[1] / "systemd" / "acedesk.sysusers.conf").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert any(fields[:2] == ["u", s["User"]] for fields in sysusers), sysusers
    assert s["ProtectSystem"] == "strict" and s["NoNewPrivileges"] == "yes" and s["PrivateTmp"] == "yes"
    assert s["StateDirectory"] == "acedesk"
    assert s["ExecStart"].endswith("acedesk run")
