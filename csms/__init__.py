"""CSMS notices: numbering, topics, subscribers, rendering, scheduling,
fan-out planning, bounces and the static archive."""
