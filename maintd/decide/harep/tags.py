"""harep's auto-repair tags: parsing, formatting and policy resolution.

The grammar is the one Ganeti's ``harep`` reads and writes (see
``doc/design-autorepair.rst`` and ``harep(1)``), so harep and maintd can take
turns on one cluster::

    ganeti:watcher:autorepair:<type>                 (instance, node group, cluster)
    ganeti:watcher:autorepair:suspend[:<timestamp>]  (instance, node group, cluster)
    ganeti:watcher:autorepair:pending:<type>:<id>:<timestamp>:<jobs>          (instance)
    ganeti:watcher:autorepair:result:<type>:<id>:<timestamp>:<result>:<jobs>  (instance)

``<type>`` is fix-storage < migrate < failover < reinstall, ``<result>`` one
of success, failure, enoperm, ``<jobs>`` ``+``-separated job ids (possibly
empty), ``<timestamp>`` whole seconds since the epoch, ``<id>`` any text
without a colon.

:func:`parse` returns ``None`` for tags that are not auto-repair tags and
raises :class:`TagError` (a ``ValueError``) for auto-repair tags it cannot
read; callers report those with the object's name and ignore them, as harep
silently does.  Numbers are read strictly (ASCII digits only): harep's
Haskell ``read`` would also take forms such as `` 12`` or ``0x1f`` that no
tool writes.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

import attrs

PREFIX = "ganeti:watcher:autorepair:"
SUSPEND = PREFIX + "suspend"
PENDING = PREFIX + "pending:"
RESULT = PREFIX + "result:"
#: Ganeti refuses longer tags (constants.MAX_TAG_LEN).
MAX_TAG_LEN = 128


class TagError(ValueError):
    """An auto-repair tag that does not follow harep's grammar."""


class RepairType(enum.IntEnum):
    """Repair permission levels, least to most destructive (harep's order)."""

    FIX_STORAGE = 0
    MIGRATE = 1
    FAILOVER = 2
    REINSTALL = 3

    @property
    def wire(self) -> str:
        return self.name.lower().replace("_", "-")

    @classmethod
    def from_wire(cls, text: str) -> RepairType:
        for member in cls:
            if member.wire == text:
                return member
        raise TagError(f"unknown repair type {text!r}")


class RepairResult(enum.IntEnum):
    """Repair outcomes; a higher value wins among tags of one repair (harep's order)."""

    ENOPERM = 0
    SUCCESS = 1
    FAILURE = 2

    @property
    def wire(self) -> str:
        return self.name.lower()

    @classmethod
    def from_wire(cls, text: str) -> RepairResult:
        for member in cls:
            if member.wire == text:
                return member
        raise TagError(f"unknown repair result {text!r}")


@attrs.frozen
class EnableTag:
    """``ganeti:watcher:autorepair:<type>``: repairs up to ``type`` are allowed."""

    type: RepairType

    def format(self) -> str:
        return PREFIX + self.type.wire


@attrs.frozen
class SuspendTag:
    """``...:suspend[:<ts>]``: no new repairs, forever (``until`` None) or until ``until``."""

    until: int | None = None

    def format(self) -> str:
        return SUSPEND if self.until is None else f"{SUSPEND}:{self.until}"

    def active(self, now: float) -> bool:
        return self.until is None or self.until > now


def _jobs(value: Iterable[int]) -> tuple[int, ...]:
    return tuple(int(j) for j in value)


@attrs.frozen
class RepairTag:
    """A ``pending`` (``result`` None) or ``result`` tag of one repair task."""

    type: RepairType
    id: str
    ts: int
    jobs: tuple[int, ...] = attrs.field(default=(), converter=_jobs)
    result: RepairResult | None = None

    def __attrs_post_init__(self) -> None:
        if ":" in self.id:
            raise TagError(f"repair id {self.id!r} contains ':'")
        if not all(0 <= n < 2**63 for n in (self.ts, *self.jobs)):
            raise TagError("timestamp or job id out of range")

    @property
    def pending(self) -> bool:
        return self.result is None

    def format(self) -> str:
        jobs = "+".join(str(j) for j in self.jobs)
        if self.result is None:
            return f"{PENDING}{self.type.wire}:{self.id}:{self.ts}:{jobs}"
        return f"{RESULT}{self.type.wire}:{self.id}:{self.ts}:{self.result.wire}:{jobs}"

    def with_result(self, result: RepairResult, ts: int) -> RepairTag:
        """This repair's result tag, made to fit Ganeti's tag length limit.

        A result tag's job list is informative only: when it would make the
        tag longer than :data:`MAX_TAG_LEN`, the oldest jobs are left out.
        """
        done = attrs.evolve(self, result=result, ts=ts)
        while len(done.format()) > MAX_TAG_LEN and done.jobs:
            done = attrs.evolve(done, jobs=done.jobs[1:])
        return done


Tag = EnableTag | SuspendTag | RepairTag


def format_tag(tag: Tag) -> str:
    return tag.format()


def _number(text: str, what: str) -> int:
    if not text or not text.isascii() or not text.isdigit() or len(text) > 19:
        raise TagError(f"bad {what} {text!r}")
    value = int(text)
    if value >= 2**63:
        raise TagError(f"{what} {text!r} out of range")
    return value


def _parse_jobs(text: str) -> tuple[int, ...]:
    if text == "":
        return ()
    return tuple(_number(j, "job id") for j in text.split("+"))


def _parse_repair(tag: str, body: str, with_result: bool) -> RepairTag:
    fields = body.split(":")
    expected = 5 if with_result else 4
    if len(fields) != expected:
        raise TagError(f"tag {tag!r}: {len(fields)} fields after the prefix, expected {expected}")
    rtype = RepairType.from_wire(fields[0])
    ts = _number(fields[2], "timestamp")
    result = RepairResult.from_wire(fields[3]) if with_result else None
    return RepairTag(rtype, fields[1], ts, _parse_jobs(fields[-1]), result)


def parse(tag: str) -> Tag | None:
    """The auto-repair meaning of ``tag``; None if it is no auto-repair tag.

    Raises :class:`TagError` naming the tag when it is a malformed one.
    """
    if tag == PREFIX[:-1]:
        raise TagError(f"tag {tag!r}: no repair type")
    if not tag.startswith(PREFIX):
        return None
    try:
        if tag.startswith(PENDING) or tag == PENDING[:-1]:
            return _parse_repair(tag, tag[len(PENDING) :], with_result=False)
        if tag.startswith(RESULT) or tag == RESULT[:-1]:
            return _parse_repair(tag, tag[len(RESULT) :], with_result=True)
        if tag == SUSPEND or tag == SUSPEND + ":":
            return SuspendTag(None)
        if tag.startswith(SUSPEND + ":"):
            return SuspendTag(_number(tag[len(SUSPEND) + 1 :], "suspend timestamp"))
        return EnableTag(RepairType.from_wire(tag[len(PREFIX) :]))
    except TagError as err:
        if str(err).startswith("tag "):
            raise
        raise TagError(f"tag {tag!r}: {err}") from None


def parse_all(tags: Iterable[str]) -> tuple[list[tuple[str, Tag]], list[str]]:
    """Parse every tag: (auto-repair tags with their text, problems found).

    Never raises; each malformed auto-repair tag gives one problem line.
    """
    good: list[tuple[str, Tag]] = []
    problems: list[str] = []
    for text in sorted(tags):
        try:
            parsed = parse(text)
        except TagError as err:
            problems.append(str(err))
            continue
        if parsed is not None:
            good.append((text, parsed))
    return good, problems


# --- policy -----------------------------------------------------------------


class PolicyKind(enum.Enum):
    ENABLED = "enabled"
    SUSPENDED = "suspended"
    NOT_ENABLED = "not-enabled"


@attrs.frozen
class Policy:
    """The auto-repair policy in force for an object (harep's AutoRepairPolicy)."""

    kind: PolicyKind
    allowed: RepairType | None = None  # ENABLED only
    until: int | None = None  # SUSPENDED only: None = forever
    source: str = ""  # "instance", "group" or "cluster" (where the deciding tags are)

    def allows(self, rtype: RepairType) -> bool:
        return (
            self.kind is PolicyKind.ENABLED and self.allowed is not None and rtype <= self.allowed
        )

    def describe(self) -> str:
        if self.kind is PolicyKind.ENABLED:
            assert self.allowed is not None
            return f"repairs up to {self.allowed.wire} allowed by {self.source} tag"
        if self.kind is PolicyKind.SUSPENDED:
            until = "forever" if self.until is None else f"until {self.until}"
            return f"suspended {until} by {self.source} tag"
        return "auto-repair not enabled"


NOT_ENABLED = Policy(PolicyKind.NOT_ENABLED)


def object_policy(tags: Iterable[str], now: float, source: str = "") -> Policy | None:
    """The policy one object's own tags set, or None when they set none.

    Within one object a permanent suspend wins, then the latest suspend still
    in the future, then the least destructive enable tag.  An expired suspend
    counts as absent, so the object then defers to the next scope.
    """
    enabled: list[RepairType] = []
    forever = False
    future: list[int] = []
    for text in tags:
        try:
            tag = parse(text)
        except TagError:
            continue
        if isinstance(tag, EnableTag):
            enabled.append(tag.type)
        elif isinstance(tag, SuspendTag):
            if tag.until is None:
                forever = True
            elif tag.until > now:
                future.append(tag.until)
    if forever:
        return Policy(PolicyKind.SUSPENDED, source=source)
    if future:
        return Policy(PolicyKind.SUSPENDED, until=max(future), source=source)
    if enabled:
        return Policy(PolicyKind.ENABLED, allowed=min(enabled), source=source)
    return None


def resolve_policy(
    instance_tags: Iterable[str],
    group_tags: Iterable[str],
    cluster_tags: Iterable[str],
    now: float,
) -> Policy:
    """The policy for an instance: the nearest object with a policy wins."""
    for tags, source in (
        (instance_tags, "instance"),
        (group_tags, "group"),
        (cluster_tags, "cluster"),
    ):
        found = object_policy(tags, now, source)
        if found is not None:
            return found
    return NOT_ENABLED
