"""IMAP intake: the protocol helpers, the UID checkpoint and lease, the mover, and the watcher."""
