"""twistd plugin for the node agent (signed self-diagnose reports, whitelisted repairs)."""

from twisted.application.service import ServiceMaker

ganeti_maintd_agent = ServiceMaker(
    "ganeti-maintd-agent",
    "maintd.agent.tap",
    "Ganeti node agent: signed self-diagnose reports and whitelisted live repairs",
    "ganeti-maintd-agent",
)
