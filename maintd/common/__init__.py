"""Formats shared by the daemon, the node agent and the simulator: the strict
JSON reader (``strictjson``) used for everything read from outside."""
