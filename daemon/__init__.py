"""The long-running service: configuration, the asyncio supervisor, IMAP
watchers, the SMTP/LMTP ingress, pipeline workers, the outbox sender, the
scheduler and the command line.  All I/O lives here; the other packages are
pure logic."""
