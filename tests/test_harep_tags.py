"""harep tag grammar: parsing, formatting, policy resolution."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from maintd.decide.harep import tags as T
from maintd.decide.harep.decide import STEPS
from maintd.decide.harep.tags import (
    EnableTag,
    Policy,
    PolicyKind,
    RepairResult,
    RepairTag,
    RepairType,
    SuspendTag,
    TagError,
    parse,
    parse_all,
    resolve_policy,
)

P = "ganeti:watcher:autorepair:"

#: Tag strings in the form harep writes them (updateTag in Harep.hs: type,
#: uuid, clockTimeToString, [result], jobs joined by '+') and as harep(1) /
#: design-autorepair.rst spell the enable and suspend tags.
HAREP_SAMPLES = {
    P + "fix-storage": EnableTag(RepairType.FIX_STORAGE),
    P + "migrate": EnableTag(RepairType.MIGRATE),
    P + "failover": EnableTag(RepairType.FAILOVER),
    P + "reinstall": EnableTag(RepairType.REINSTALL),
    P + "suspend": SuspendTag(None),
    P + "suspend:1700000000": SuspendTag(1700000000),
    P + "pending:failover:1e8d5b5c-7c5e-4b1f-9a55-0fb4a2a8c1d2:1400000000:12": RepairTag(
        RepairType.FAILOVER, "1e8d5b5c-7c5e-4b1f-9a55-0fb4a2a8c1d2", 1400000000, (12,)
    ),
    P + "pending:reinstall:abc:1400000000:12+13": RepairTag(
        RepairType.REINSTALL, "abc", 1400000000, (12, 13)
    ),
    P + "pending:fix-storage:abc:5:": RepairTag(RepairType.FIX_STORAGE, "abc", 5, ()),
    P + "result:failover:abc:1400000100:success:12": RepairTag(
        RepairType.FAILOVER, "abc", 1400000100, (12,), RepairResult.SUCCESS
    ),
    P + "result:reinstall:x:1:failure:3+4": RepairTag(
        RepairType.REINSTALL, "x", 1, (3, 4), RepairResult.FAILURE
    ),
    P + "result:migrate:x:1:enoperm:": RepairTag(
        RepairType.MIGRATE, "x", 1, (), RepairResult.ENOPERM
    ),
}


class ParseTests(SynchronousTestCase):
    def test_harep_samples_parse_and_format_back(self) -> None:
        for text, expected in HAREP_SAMPLES.items():
            self.assertEqual(parse(text), expected, text)
            self.assertEqual(expected.format(), text)

    def test_other_tags_are_not_autorepair_tags(self) -> None:
        for text in ["", "maintd:repairready:x", "ganeti:watcher:other", "htools:iextags:a"]:
            self.assertIsNone(parse(text))

    def test_suspend_with_trailing_colon_is_permanent(self) -> None:
        # harep's chompPrefix gives "" for both spellings: suspended forever.
        self.assertEqual(parse(P + "suspend:"), SuspendTag(None))

    def test_malformed_autorepair_tags_raise_naming_the_tag(self) -> None:
        bad = [
            P[:-1],
            P + "fixstorage",
            P + "suspend:soon",
            P + "suspend:-5",
            P + "pending",
            P + "pending:",
            P + "pending:failover:id:12",
            P + "pending:failover:id:12:1:2",
            P + "pending:explode:id:12:1",
            P + "pending:failover:id:ts:1",
            P + "pending:failover:id:12:1+",
            P + "pending:failover:id:12:+1",
            P + "pending:failover:id:12:-1",
            P + "pending:failover:id:12:1 ",
            P + "pending:failover:id:12:٣",
            P + "result:failover:id:12:1",
            P + "result:failover:id:12:ok:1",
            P + "pending:failover:id:99999999999999999999:1",
        ]
        for text in bad:
            with self.assertRaises(TagError, msg=text) as caught:
                parse(text)
            self.assertIn(repr(text), str(caught.exception))

    def test_parse_all_reports_and_skips_malformed(self) -> None:
        good, problems = parse_all(["a", P + "failover", P + "bogus"])
        self.assertEqual(good, [(P + "failover", EnableTag(RepairType.FAILOVER))])
        self.assertEqual(len(problems), 1)
        self.assertIn("bogus", problems[0])

    def test_ordering_of_types_and_results(self) -> None:
        self.assertEqual(
            sorted(RepairType, key=int),
            [RepairType.FIX_STORAGE, RepairType.MIGRATE, RepairType.FAILOVER, RepairType.REINSTALL],
        )
        self.assertLess(RepairResult.ENOPERM, RepairResult.SUCCESS)
        self.assertLess(RepairResult.SUCCESS, RepairResult.FAILURE)

    def test_tags_maintd_writes_are_valid_ganeti_tags(self) -> None:
        # Ganeti's objects.TaggableObject.ValidateTag: <= 128 chars of [\w.+*/:@-].
        valid = re.compile(r"^[\w.+*/:@-]+$")
        rid = "0fcd5c0e-74ee-5cfb-bbea-81de488bb45d"
        ts = 1795608670
        for rtype in RepairType:
            # as many 9-digit job ids as maintd's repair of that type takes
            big = (999_999_999, 999_999_998, 999_999_997)[: STEPS[rtype]]
            pend = RepairTag(rtype, rid, ts, big)
            self.assertLessEqual(len(pend.format()), T.MAX_TAG_LEN, pend.format())
            for res in RepairResult:
                done = pend.with_result(res, ts)
                self.assertEqual(done.jobs, big)
                self.assertLessEqual(len(done.format()), T.MAX_TAG_LEN)
                self.assertRegex(done.format(), valid)

    def test_result_tag_drops_oldest_jobs_to_fit(self) -> None:
        jobs = tuple(range(10**9, 10**9 + 6))
        done = RepairTag(RepairType.REINSTALL, "x" * 36, 10**9, jobs).with_result(
            RepairResult.FAILURE, 10**9
        )
        self.assertLessEqual(len(done.format()), T.MAX_TAG_LEN)
        self.assertEqual(done.jobs, jobs[-len(done.jobs) :])
        self.assertGreater(len(done.jobs), 0)

    def test_repair_tag_rejects_unformattable_values(self) -> None:
        self.assertRaises(TagError, RepairTag, RepairType.FAILOVER, "a:b", 1, ())
        self.assertRaises(TagError, RepairTag, RepairType.FAILOVER, "a", -1, ())
        self.assertRaises(TagError, RepairTag, RepairType.FAILOVER, "a", 1, (2**63,))


ids = st.text(alphabet=st.characters(blacklist_characters=":"), max_size=40)
numbers = st.integers(min_value=0, max_value=2**63 - 1)
repair_tags = st.builds(
    RepairTag,
    st.sampled_from(RepairType),
    ids,
    numbers,
    st.lists(numbers, max_size=5).map(tuple),
    st.none() | st.sampled_from(RepairResult),
)
all_tags = (
    repair_tags
    | st.builds(EnableTag, st.sampled_from(RepairType))
    | st.builds(SuspendTag, st.none() | numbers)
)


#: Deterministic runs (same examples every time), enough of them to matter.
PROPERTY = settings(derandomize=True, max_examples=500, deadline=None, database=None)


class PropertyTests(SynchronousTestCase):
    @PROPERTY
    @given(all_tags)
    def test_parse_inverts_format(self, tag: T.Tag) -> None:
        self.assertEqual(parse(tag.format()), tag)

    @PROPERTY
    @given(st.text(max_size=80))
    def test_no_string_crashes_the_parser(self, text: str) -> None:
        try:
            parse(text)
        except TagError:
            pass

    @PROPERTY
    @given(st.text(max_size=60))
    def test_no_suffix_crashes_the_parser(self, suffix: str) -> None:
        for prefix in (
            P,
            P + "pending:",
            P + "result:",
            P + "suspend:",
            P + "result:failover:i:1:",
        ):
            try:
                result = parse(prefix + suffix)
            except TagError:
                continue
            self.assertIsNotNone(result)

    @PROPERTY
    @given(st.lists(st.text(max_size=30) | all_tags.map(lambda t: t.format()), max_size=8))
    def test_policy_never_crashes(self, tag_list: list[str]) -> None:
        policy = resolve_policy(tag_list, tag_list, tag_list, 1000.0)
        self.assertIsInstance(policy, Policy)


class PolicyTests(SynchronousTestCase):
    now = 1_000_000.0

    def policy(self, inst=(), group=(), cluster=()) -> Policy:
        return resolve_policy(inst, group, cluster, self.now)

    def test_no_tags_not_enabled(self) -> None:
        self.assertEqual(self.policy().kind, PolicyKind.NOT_ENABLED)
        self.assertFalse(self.policy().allows(RepairType.FIX_STORAGE))

    def test_least_destructive_within_one_object(self) -> None:
        pol = self.policy(cluster=[P + "reinstall", P + "fix-storage"])
        self.assertEqual(
            (pol.kind, pol.allowed, pol.source),
            (PolicyKind.ENABLED, RepairType.FIX_STORAGE, "cluster"),
        )

    def test_man_page_example(self) -> None:
        # I1 has failover, the cluster has fix-storage and reinstall.
        cluster = [P + "fix-storage", P + "reinstall"]
        i1 = self.policy(inst=[P + "failover"], cluster=cluster)
        i2 = self.policy(cluster=cluster)
        self.assertEqual(i1.allowed, RepairType.FAILOVER)
        self.assertEqual(i2.allowed, RepairType.FIX_STORAGE)

    def test_nearest_object_wins(self) -> None:
        self.assertEqual(
            self.policy(group=[P + "reinstall"], cluster=[P + "fix-storage"]).allowed,
            RepairType.REINSTALL,
        )
        self.assertEqual(
            self.policy(inst=[P + "migrate"], group=[P + "reinstall"]).allowed,
            RepairType.MIGRATE,
        )

    def test_suspend_nearest_wins_both_ways(self) -> None:
        self.assertEqual(
            self.policy(inst=[P + "failover"], cluster=[P + "suspend"]).kind, PolicyKind.ENABLED
        )
        suspended = self.policy(group=[P + "suspend"], cluster=[P + "reinstall"])
        self.assertEqual((suspended.kind, suspended.until), (PolicyKind.SUSPENDED, None))

    def test_suspend_beats_enable_in_same_object(self) -> None:
        pol = self.policy(inst=[P + "reinstall", P + "suspend"])
        self.assertEqual(pol.kind, PolicyKind.SUSPENDED)

    def test_timed_suspend(self) -> None:
        later = int(self.now) + 60
        pol = self.policy(inst=[P + f"suspend:{later}", P + f"suspend:{later - 30}"])
        self.assertEqual((pol.kind, pol.until), (PolicyKind.SUSPENDED, later))
        forever = self.policy(inst=[P + f"suspend:{later}", P + "suspend"])
        self.assertIsNone(forever.until)

    def test_expired_suspend_is_no_suspend(self) -> None:
        past = int(self.now) - 1
        pol = self.policy(inst=[P + f"suspend:{past}", P + "failover"])
        self.assertEqual((pol.kind, pol.allowed), (PolicyKind.ENABLED, RepairType.FAILOVER))
        # An object with only an expired suspend defers to the next scope.
        pol = self.policy(inst=[P + f"suspend:{past}"], cluster=[P + "migrate"])
        self.assertEqual((pol.allowed, pol.source), (RepairType.MIGRATE, "cluster"))
        # The timestamp itself is already expired (harep: suspended while ts > now).
        pol = self.policy(inst=[P + f"suspend:{int(self.now)}"], cluster=[P + "migrate"])
        self.assertEqual(pol.kind, PolicyKind.ENABLED)

    def test_malformed_policy_tags_are_ignored(self) -> None:
        pol = self.policy(inst=[P + "suspend:tomorrow", P + "everything"], cluster=[P + "migrate"])
        self.assertEqual((pol.allowed, pol.source), (RepairType.MIGRATE, "cluster"))

    def test_pending_and_result_tags_set_no_policy(self) -> None:
        pol = self.policy(inst=[P + "result:failover:a:1:success:1"], group=[P + "failover"])
        self.assertEqual(pol.source, "group")
