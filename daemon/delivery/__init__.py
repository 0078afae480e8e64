"""The way out: SMTP delivery of replies, control mail and notices, and the spool."""
