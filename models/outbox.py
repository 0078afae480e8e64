"""Tables owned by the outbox work (filled in by that work)."""
