"""Tables owned by the csms work (filled in by that work)."""
