"""The ``acedesk`` command line: parses arguments, calls the domain, prints (entry point :mod:`daemon.cli.main`)."""
