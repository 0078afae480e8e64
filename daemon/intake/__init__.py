"""Intake: mail arriving by SMTP/LMTP, storing raw messages, parsing them, and quarantine."""
