"""Tables owned by the responders work (filled in by that work)."""
