"""The daemon core: twistd service composition (``tap``), options and config,
the round driver (``scheduler``, ``round``, ``steps/``), durable state
(``state``, ``store``), the read-only HTTP API (``api``), the admin control
socket (``control``) and the mastership check (``mastership``)."""
