"""The node agent ``ganeti-maintd-agent``: signed self-diagnose reports and
whitelisted live repairs on every node (what Ganeti 3.x's mond lacks).

``whitelist`` (restricted-command rules), ``runner`` (one bounded script
run, whole process group killed), ``diagnose`` (the periodic diagnose and
its mond-style report), ``repair`` (checks of a signed repair request,
durable nonces and results, one repair at a time), ``http`` (the HTTP
resource), ``tap`` (options and service composition).
"""
