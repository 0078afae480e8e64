"""Tables owned by the classification work (filled in by that work)."""
