#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: a virtualenv with acedesk and its
# test dependencies, and (with --test-services) the system packages the tests
# start themselves: Dovecot (IMAP) and Chromium (the console's browser tests,
# driven by Playwright).  Installs with apt-get when run as root; otherwise
# says exactly what to install.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "acedesk needs Python 3.11 or newer ($PYTHON is $($PYTHON --version 2>&1))." >&2
    exit 1
fi

stamp="$VENV/.acedesk-installed"
if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating virtualenv $VENV"
    "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing acedesk and its dependencies into $VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e '.[test]'
    touch "$stamp"
fi

if [ "${1:-}" = "--test-services" ]; then
    need=()
    command -v dovecot >/dev/null 2>&1 || [ -x /usr/sbin/dovecot ] || need+=(dovecot-imapd)
    # The browser tests launch Debian's Chromium at this path (no browser download at run time).
    [ -x /usr/bin/chromium ] || need+=(chromium)
    if [ ${#need[@]} -gt 0 ]; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            echo "setup: installing ${need[*]} with apt-get"
            export DEBIAN_FRONTEND=noninteractive
            apt-get update -qq
            apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
            # The package starts a system-wide Dovecot on port 143; the tests run their own.
            (service dovecot stop || true) >/dev/null 2>&1
        else
            echo "setup: the tests need ${need[*]} (Dovecot's IMAP server; Chromium at /usr/bin/chromium" >&2
            echo "for the console's browser tests). Install with:" >&2
            echo "    sudo apt-get install ${need[*]}" >&2
            echo "then run 'make test' again." >&2
            exit 1
        fi
    fi
fi
