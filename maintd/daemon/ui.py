"""The status page at ``/ui``: one server-rendered HTML page, no script.

What an operator wants at a glance: the incidents (node, action, status,
reason, progress of an evacuation), the nodes under evacuation against the
budget, the storm breaker and the pause (from the guardrails overview, the
``/1/overview`` object), the awaited jobs, the last and the next round, the
evacuated instances.  The page reloads itself (``<meta http-equiv=refresh>``),
has its CSS inline (no external asset, nothing fetched), and reflows on a
phone (viewport meta; tables become cards on narrow screens).

Every string on the page goes through ``twisted.web.template``, which
escapes text and attribute values: node-supplied text (a self-diagnose
report's ``details``, a reason quoting a job error) shows as text.  The
answer also carries a Content-Security-Policy that allows no script at all.

:func:`progress` and :func:`page_model` are pure (plain values in, plain
values out); :class:`StatusPage` turns the model into HTML.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
from twisted.internet import defer
from twisted.web.template import Tag, flattenString, tags

from maintd.daemon.state import Action, Incident, MaintState, RepairStatus
from maintd.decide import guardrails

#: Longest node-supplied text shown in one cell (the rest is cut, with "…").
MAX_TEXT = 400
#: Longest lists (awaited jobs, evacuated instances) shown in full.
MAX_LIST = 200
#: Incidents shown at most (active ones first); /1/status has them all.
MAX_ROWS = 200

CSP = b"default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; form-action 'none'"


@attrs.frozen
class Progress:
    """How far an incident is: its jobs, and what is still on its node."""

    jobs_done: int
    jobs_running: int
    #: Instances with the node as primary / as secondary, per the last
    #: snapshot (None: unknown, no snapshot of that node yet).
    primaries_left: int | None = None
    secondaries_left: int | None = None
    #: Jobs still needed to empty the node (the evacuation plan's moves):
    #: a DRBD primary takes two (to its secondary, then a new secondary),
    #: any other instance one.  None when unknown.
    moves_left: int | None = None

    def text(self) -> str:
        parts = [f"{self.jobs_done} job{'s' if self.jobs_done != 1 else ''} done"]
        if self.jobs_running:
            parts.append(f"{self.jobs_running} running")
        left = self.moves_left
        if left is not None:
            parts.append(
                f"{left} move{'s' if left != 1 else ''} left "
                f"({self.primaries_left} primary, {self.secondaries_left} secondary "
                "instances on the node)"
            )
        return ", ".join(parts)


def progress(incident: Incident, awaited: Iterable[int], cluster: Any = None) -> Progress:
    """The progress of ``incident``: jobs finished (not awaited any more) and
    running; for an active evacuation, the instances still on the node in
    ``cluster`` and the moves they need, counted as the evacuation plan
    (:mod:`maintd.decide.evacplan`) moves them: a DRBD primary goes to its
    secondary and then gets a new secondary (two moves), a shared-storage
    or diskless primary moves once, a DRBD secondary is replaced once."""
    waiting = set(awaited)
    running = sum(1 for j in incident.jobs if j in waiting)
    done = len(incident.jobs) - running
    evacuation = incident.action in (Action.EVACUATE, Action.EVACUATE_FAILOVER)
    if not evacuation or incident.status.finalized or cluster is None:
        return Progress(done, running)
    node = incident.node_name
    if node not in cluster.nodes:
        return Progress(done, running)
    primaries = [i for i in cluster.instances.values() if i.primary == node]
    secondaries = [
        i for i in cluster.instances.values() if node in i.secondaries and i.primary != node
    ]
    moves = sum(2 if i.is_drbd else 1 for i in primaries) + len(secondaries)
    return Progress(done, running, len(primaries), len(secondaries), moves)


def _clip(text: str, limit: int = MAX_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def details_text(original: Mapping[str, Any]) -> str:
    """A self-diagnose report's ``details`` as one line of text."""
    details = original.get("details")
    if details is None or details == "":
        return ""
    if isinstance(details, str):
        return _clip(details)
    try:
        return _clip(json.dumps(details, sort_keys=True, ensure_ascii=False))
    except (TypeError, ValueError):
        return _clip(repr(details))


def when(seconds: float | None, now: float) -> str:
    """``12:03:04 UTC (5 s ago)`` / ``(in 40 s)``; ``—`` for None."""
    if seconds is None:
        return "—"
    clock = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))
    delta = seconds - now
    return f"{clock} ({_span(delta)})"


def _span(delta: float) -> str:
    amount = abs(delta)
    if amount < 1:
        return "now"
    if amount < 120:
        text = f"{amount:.0f} s"
    elif amount < 7200:
        text = f"{amount / 60:.0f} min"
    elif amount < 172800:
        text = f"{amount / 3600:.0f} h"
    else:
        text = f"{amount / 86400:.0f} days"
    return f"in {text}" if delta > 0 else f"{text} ago"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def guard_facts(ov: Mapping[str, Any], now: float) -> list[Fact]:
    """The guardrails of an overview object as summary facts: nodes under
    evacuation against the budget, the storm breaker, the pause."""
    facts: list[Fact] = []
    evacuating, budget = ov.get("evacuating"), ov.get("max-evacuating")
    if isinstance(evacuating, int):
        if isinstance(budget, int):
            tone = "warn" if evacuating >= budget else "ok"
            facts.append(Fact("Nodes under evacuation", f"{evacuating} of at most {budget}", tone))
        else:
            facts.append(Fact("Nodes under evacuation", f"{evacuating} (no budget known yet)"))
    breaker = ov.get("storm-breaker")
    if isinstance(breaker, Mapping):
        reporting = breaker.get("reporting", "?")
        plural = "" if reporting == 1 else "s"
        counts = f"{reporting} node{plural} reporting, threshold {breaker.get('threshold', '?')}"
        if breaker.get("tripped") is True:
            facts.append(Fact("Storm breaker", f"TRIPPED: {counts}", "bad"))
        else:
            facts.append(Fact("Storm breaker", f"closed ({counts})", "ok"))
    if "paused" in ov:
        pause = ov.get("paused")
        if isinstance(pause, Mapping):
            text = f"paused: {_clip(str(pause.get('reason', '')))}"
            source = pause.get("source")
            text += " (cluster tag maintd:pause)" if source == "tag" else " (ganeti-maintd-ctl)"
            until = pause.get("until")
            text += f", until {when(until, now)}" if _is_number(until) else ", until resumed"
            facts.append(Fact("Pause", text, "warn"))
        else:
            facts.append(Fact("Pause", "not paused", "ok"))
    return facts


@attrs.frozen
class IncidentRow:
    uuid: str
    node: str
    action: str
    status: str
    reason: str
    details: str
    progress: str
    updated: str


@attrs.frozen
class Fact:
    """One line of the summary: label, value, and a CSS class for the value."""

    label: str
    value: str
    tone: str = ""


@attrs.frozen
class PageModel:
    title: str
    refresh: int
    facts: tuple[Fact, ...]
    incidents: tuple[IncidentRow, ...]
    #: Incidents in all (more than the rows when there were too many to show).
    total_incidents: int
    jobs: tuple[int, ...]
    evacuated: tuple[str, ...]
    generated: str


_ORDER = {
    RepairStatus.PENDING: 0,
    RepairStatus.NOTED: 1,
    RepairStatus.FAILED: 2,
    RepairStatus.CANCELED: 3,
    RepairStatus.COMPLETED: 4,
}


def page_model(
    state: MaintState,
    *,
    now: float,
    refresh: int,
    cluster: Any = None,
    round_running: bool = False,
    mastership: Any = None,
    overview: Mapping[str, Any] | None = None,
) -> PageModel:
    """Everything the page shows, as plain values (pure).

    ``overview``: the guardrails overview (``/1/overview``: budget, storm
    breaker, pause, next round); without it those facts are not shown.
    """
    ov = overview or {}
    awaited = tuple(state.jobs)
    rows = []
    ordered = sorted(state.incidents, key=lambda i: (_ORDER[i.status], -i.mtime, i.node_name))
    for inc in ordered[:MAX_ROWS]:
        rows.append(
            IncidentRow(
                uuid=inc.uuid,
                node=inc.node_name or inc.node,
                action=inc.action.wire,
                status=inc.status.wire,
                reason=_clip(inc.reason),
                details=details_text(inc.original),
                progress=progress(inc, awaited, cluster).text(),
                updated=when(inc.mtime, now),
            )
        )
    facts: list[Fact] = []
    if mastership is not None:
        if mastership.is_master:
            master = "yes" if mastership.verified else "yes (voting skipped)"
            facts.append(Fact("Master", master, "ok"))
        else:
            facts.append(Fact("Master", "no: not submitting jobs", "bad"))
    last = state.last_round or {}
    if last:
        result = str(last.get("result", "?"))
        text = f"#{last.get('number', '?')} {result}"
        end = last.get("end")
        if isinstance(end, int | float):
            text += f", ended {when(float(end), now)}"
        if last.get("dry_run"):
            text += " (dry run)"
        facts.append(Fact("Last round", text, "ok" if result == "ok" else "bad"))
        if last.get("error"):
            facts.append(Fact("Last round error", _clip(str(last["error"])), "bad"))
    else:
        facts.append(Fact("Last round", "none yet"))
    if round_running:
        facts.append(Fact("Next round", "a round is running now"))
    else:
        next_round = ov.get("next-round")
        facts.append(Fact("Next round", when(next_round if _is_number(next_round) else None, now)))
    facts.extend(guard_facts(ov, now))
    active = [i for i in state.incidents if not i.status.finalized]
    facts.append(Fact("Active incidents", str(len(active)), "warn" if active else "ok"))
    facts.append(Fact("Awaited jobs", str(len(awaited))))
    name = getattr(cluster, "name", None)
    title = f"ganeti-maintd: {name}" if name else "ganeti-maintd"
    return PageModel(
        title=title,
        refresh=refresh,
        facts=tuple(facts),
        incidents=tuple(rows),
        total_incidents=len(state.incidents),
        jobs=awaited,
        evacuated=tuple(state.evacuated),
        generated=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now)),
    )


STYLE = """
:root { color-scheme: light dark; --fg:#1d2430; --bg:#f6f7f9; --card:#fff; --line:#d8dde4;
  --muted:#5d6878; --ok:#1f7a3a; --warn:#9a6200; --bad:#b42318; --info:#2457a6; }
@media (prefers-color-scheme: dark) { :root { --fg:#e6e9ee; --bg:#14171c; --card:#1d2128;
  --line:#343a44; --muted:#a0a9b6; --ok:#5cc27a; --warn:#e0a53a; --bad:#f0766b; --info:#7aa7f0; } }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
  color:var(--fg); background:var(--bg); }
header { padding:12px 16px; border-bottom:1px solid var(--line); background:var(--card); }
h1 { font-size:1.25rem; margin:0; overflow-wrap:anywhere; }
header p { margin:2px 0 0; color:var(--muted); font-size:.85rem; }
main { padding:12px 16px 32px; max-width:1200px; }
h2 { font-size:1.05rem; margin:22px 0 8px; }
.facts { display:grid; grid-template-columns:repeat(auto-fill,minmax(165px,1fr)); gap:8px;
  margin:0; }
.facts div { background:var(--card); border:1px solid var(--line); border-radius:8px;
  padding:8px 10px; }
.facts dt { color:var(--muted); font-size:.8rem; }
.facts dd { margin:0; font-weight:600; overflow-wrap:anywhere; }
.ok { color:var(--ok); } .warn { color:var(--warn); } .bad { color:var(--bad); }
table { width:100%; border-collapse:collapse; background:var(--card);
  border:1px solid var(--line); border-radius:8px; }
th, td { text-align:left; vertical-align:top; padding:7px 9px;
  border-bottom:1px solid var(--line); overflow-wrap:break-word; }
th, td.nowrap { white-space:nowrap; }
th { font-size:.8rem; color:var(--muted); font-weight:600; }
tr:last-child td { border-bottom:0; }
.status { display:inline-block; padding:1px 8px; border-radius:999px; font-size:.8rem;
  font-weight:600; border:1px solid currentColor; }
.s-noted, .s-pending { color:var(--info); } .s-completed { color:var(--ok); }
.s-failed { color:var(--bad); } .s-canceled { color:var(--muted); }
.uuid, .mono { font-family:ui-monospace,SFMono-Regular,Menlo,monospace; font-size:.8rem; }
.uuid { color:var(--muted); display:block; }
.empty { color:var(--muted); }
ul.chips { list-style:none; padding:0; margin:0; display:flex; flex-wrap:wrap; gap:6px; }
ul.chips li { background:var(--card); border:1px solid var(--line); border-radius:6px;
  padding:2px 8px; }
@media (max-width: 700px) {
  main { padding:10px 10px 24px; }
  table, thead, tbody, tr, td { display:block; width:100%; }
  thead { display:none; }
  table { border:0; background:none; }
  tr { background:var(--card); border:1px solid var(--line); border-radius:8px;
    margin-bottom:10px; padding:4px 0; }
  td { border:0; padding:3px 10px; }
  td::before { content:attr(data-label); display:block; color:var(--muted);
    font-size:.75rem; }
}
"""

_COLUMNS = ("Node", "Action", "Status", "Progress", "Reason", "Report details", "Updated")


def _incident_row(row: IncidentRow) -> Tag:
    def cell(label: str, *content: Any, **attrs_: str) -> Tag:
        return tags.td(*content, **{"data-label": label, **attrs_})

    return tags.tr(
        cell("Node", row.node, tags.span(row.uuid, class_="uuid")),
        cell("Action", row.action, class_="nowrap"),
        cell("Status", tags.span(row.status, class_=f"status s-{row.status}"), class_="nowrap"),
        cell("Progress", row.progress),
        cell("Reason", row.reason or "—"),
        cell("Report details", row.details, class_="mono"),
        cell("Updated", row.updated),
        id=f"incident-{row.uuid}",
        class_="incident",
        **{"data-status": row.status, "data-node": row.node},
    )


def _chips(items: Sequence[Any], what: str, element_id: str) -> Tag:
    if not items:
        return tags.p(f"No {what}.", class_="empty", id=element_id)
    shown = [tags.li(str(i)) for i in items[:MAX_LIST]]
    if len(items) > MAX_LIST:
        shown.append(tags.li(f"… {len(items) - MAX_LIST} more"))
    return tags.ul(*shown, class_="chips", id=element_id)


def render_tree(model: PageModel) -> Tag:
    """The page as a ``twisted.web.template`` tag tree (escaped when flattened)."""
    facts = tags.dl(
        *(
            tags.div(tags.dt(f.label), tags.dd(f.value, class_=f.tone) if f.tone else tags.dd(f.value))
            for f in model.facts
        ),
        class_="facts",
        id="facts",
    )
    if model.incidents:
        incidents: Tag = tags.table(
            tags.thead(tags.tr(*(tags.th(c) for c in _COLUMNS))),
            tags.tbody(*(_incident_row(r) for r in model.incidents)),
            id="incidents",
        )
    else:
        incidents = tags.p("No incidents.", class_="empty", id="incidents")
    hidden = model.total_incidents - len(model.incidents)
    more = (
        tags.p(f"{hidden} older finalized incidents not shown; /1/status lists them all.",
               class_="empty")
        if hidden > 0
        else ""
    )
    return tags.html(
        tags.head(
            tags.meta(charset="utf-8"),
            tags.meta(name="viewport", content="width=device-width, initial-scale=1"),
            tags.meta(**{"http-equiv": "refresh", "content": str(model.refresh)}),
            tags.title(model.title),
            tags.style(STYLE),
        ),
        tags.body(
            tags.header(
                tags.h1(model.title),
                tags.p(f"Generated {model.generated}; refreshes every {model.refresh} s"),
            ),
            Tag("main")(
                tags.h2("Overview"),
                facts,
                tags.h2(f"Incidents ({model.total_incidents})"),
                incidents,
                more,
                tags.h2(f"Awaited jobs ({len(model.jobs)})"),
                _chips(model.jobs, "awaited jobs", "jobs"),
                tags.h2(f"Evacuated instances ({len(model.evacuated)})"),
                _chips(model.evacuated, "recently evacuated instances", "evacuated"),
            ),
        ),
        lang="en",
    )


async def render_page(model: PageModel) -> bytes:
    """The page's HTML (UTF-8)."""
    body: bytes = await flattenString(None, render_tree(model))
    return b"<!DOCTYPE html>\n" + body


class StatusPage:
    """Builds the page from the daemon's live parts (each a callable, so the
    page always shows the current values)."""

    def __init__(
        self,
        state: Callable[[], MaintState],
        *,
        refresh: int = 10,
        cluster: Callable[[], Any] = lambda: None,
        round_running: Callable[[], bool] = lambda: False,
        mastership: Any = None,
        overview: Callable[[], Mapping[str, Any]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self.refresh = refresh
        self.cluster = cluster
        self.round_running = round_running
        self.mastership = mastership
        #: The guardrails overview now (the daemon passes its /1/overview builder).
        self.overview = overview or (lambda: guardrails.overview(self.state(), now=self.clock()))
        self.clock = clock
        self._cached: tuple[tuple[int, int, int], bytes] | None = None

    def model(self) -> PageModel:
        return page_model(
            self.state(),
            now=self.clock(),
            refresh=self.refresh,
            cluster=self.cluster(),
            round_running=self.round_running(),
            mastership=self.mastership,
            overview=self.overview(),
        )

    def render(self) -> defer.Deferred[bytes]:
        """The page; rendered at most once a second for the same state, so
        many readers (or a reload loop) cost the reactor little."""
        return defer.Deferred.fromCoroutine(self._render())

    async def _render(self) -> bytes:
        key = (id(self.state()), id(self.cluster()), int(self.clock()))
        if self._cached is not None and self._cached[0] == key:
            return self._cached[1]
        html = await render_page(self.model())
        self._cached = (key, html)
        return html


def refresh_seconds(round_delay: float) -> int:
    """How often the page reloads: with the rounds, between 2 and 15 seconds."""
    return int(min(15, max(2, round_delay)))
