"""CSMS notices at the edge: the scheduler, the fan-out to subscribers, and the unsubscribe pages."""
