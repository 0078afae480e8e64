"""The web edge: one Starlette app served by uvicorn on ``[web] listen``.

It serves the analysts' console (queue, tickets, CSMS, the desk's numbers),
the public pages of subscribers (one-click unsubscribe, confirmation,
preferences, the CSMS archive) and the operators' endpoints (``/metrics``,
``/healthz``, ``/readyz``).  It adds no business rule of its own: every
action calls a function of ``responders/`` or ``csms/``.
"""
