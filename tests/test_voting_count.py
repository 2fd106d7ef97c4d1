"""Pure vote counting, answer parsing, retry schedule and ssconf reading."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from maintd.cluster.voting import (
    Ballot,
    NodedError,
    NotMasterError,
    SetupError,
    Tally,
    Verdict,
    node_address,
    parse_master_answer,
    read_ssconf,
    verify_by_vote,
)

ME = "node1.example.com"
OTHER = "node2.example.com"


def ballots(spec: str) -> tuple[Ballot, ...]:
    """'m' = vote for me, 'o' = vote for OTHER, '-' = missing; node i is n<i>."""
    out = []
    for i, c in enumerate(spec):
        node = f"n{i}.example.com"
        if c == "m":
            out.append(Ballot(node, ME))
        elif c == "o":
            out.append(Ballot(node, OTHER))
        else:
            out.append(Ballot.missing(node, "connection refused"))
    return tuple(out)


class CountTests(SynchronousTestCase):
    # (ballots, verdict): strict majority of ALL nodes; undecided while the
    # missing answers could still give us the majority.
    CASES = [
        ("m", Verdict.WON),
        ("-", Verdict.UNDECIDED),
        ("o", Verdict.LOST),
        ("", Verdict.LOST),
        ("mm", Verdict.WON),
        ("mo", Verdict.LOST),  # 1 of 2 is not more than half
        ("m-", Verdict.UNDECIDED),
        ("mmo", Verdict.WON),
        ("moo", Verdict.LOST),
        ("m--", Verdict.UNDECIDED),
        ("mo-", Verdict.UNDECIDED),
        ("oo-", Verdict.LOST),
        ("mmoo", Verdict.LOST),  # tie is not a majority
        ("mm--", Verdict.UNDECIDED),
        ("mmm-", Verdict.WON),
        ("mmmoo", Verdict.WON),
        ("mmooo", Verdict.LOST),
        ("mm-oo", Verdict.UNDECIDED),
        ("m---o", Verdict.UNDECIDED),
        ("m--oo", Verdict.UNDECIDED),  # 1 + 2 missing could still make 3 of 5
        ("m-ooo", Verdict.LOST),
    ]

    def test_table(self) -> None:
        for spec, expected in self.CASES:
            tally = Tally(ME, ballots(spec))
            self.assertEqual(tally.verdict, expected, f"ballots {spec!r}")

    def test_names_compare_case_and_dot_insensitively(self) -> None:
        tally = Tally(ME, (Ballot("a", "NODE1.example.com."), Ballot("b", ME), Ballot("c", OTHER)))
        self.assertEqual(tally.in_favor, 2)
        self.assertEqual(tally.verdict, Verdict.WON)

    def test_describe_names_every_vote_and_silence(self) -> None:
        tally = Tally(ME, (
            Ballot("a.example.com", OTHER),
            Ballot("b.example.com", OTHER),
            Ballot("c.example.com", ME),
            Ballot.missing("d.example.com", "TLS failure: certificate verify failed"),
        ))
        text = tally.describe()
        self.assertIn("1 of 4 nodes voted for node1.example.com", text)
        self.assertIn("node2.example.com=2", text)
        self.assertIn("a.example.com->node2.example.com", text)
        self.assertIn("c.example.com->node1.example.com", text)
        self.assertIn("d.example.com (TLS failure: certificate verify failed)", text)


class ParseAnswerTests(SynchronousTestCase):
    def test_good_answer(self) -> None:
        self.assertEqual(parse_master_answer("n", b'[true, "node9.example.com"]'), "node9.example.com")

    def test_garbage_is_an_error_naming_the_node(self) -> None:
        for body in [b"", b"<html>", b"{}", b"[true]", b'["yes", "x"]', b"[true, 42]",
                     b'[true, "not a host!"]', b"[true, null]", b'[true, ""]', b"\xff\xfe"]:
            with self.assertRaises(NodedError, msg=repr(body)) as cm:
                parse_master_answer("node7.example.com", body)
            self.assertIn("node7.example.com", str(cm.exception))

    def test_answers_are_read_strictly(self) -> None:
        for body, why in [(b'[true, "a.example.com", NaN]', "NaN is not JSON"),
                          (b"[" * 100 + b"]" * 100, "nested deeper than 8"),
                          (b'[true, "\\ud800.example.com"]', "lone surrogate")]:
            with self.assertRaises(NodedError) as cm:
                parse_master_answer("node7.example.com", body)
            self.assertIn("node node7.example.com: answer is not JSON", str(cm.exception))
            self.assertIn(why, str(cm.exception))

    def test_noded_failure_is_an_error(self) -> None:
        with self.assertRaises(NodedError) as cm:
            parse_master_answer("n1", b'[false, "ssconf missing"]')
        self.assertIn("ssconf missing", str(cm.exception))


class RetryTests(SynchronousTestCase):
    def run_votes(self, rounds: list[str], retries: int = 6) -> tuple[Tally | NotMasterError, list[float]]:
        slept: list[float] = []
        it = iter(rounds)

        def gather() -> tuple[Ballot, ...]:
            return ballots(next(it))

        try:
            return verify_by_vote(gather, ME, retries=retries, interval=10.0, sleep=slept.append), slept
        except NotMasterError as e:
            return e, slept

    def test_won_at_once_does_not_sleep(self) -> None:
        result, slept = self.run_votes(["mmo"])
        assert isinstance(result, Tally)
        self.assertEqual(result.in_favor, 2)
        self.assertEqual(slept, [])

    def test_lost_at_once_does_not_retry(self) -> None:
        result, slept = self.run_votes(["moo"])
        assert isinstance(result, NotMasterError)
        self.assertIn("lost", str(result))
        self.assertIn("n1.example.com->node2.example.com", str(result))
        self.assertEqual(slept, [])

    def test_missing_answers_retry_until_decided(self) -> None:
        result, slept = self.run_votes(["m--", "m--", "mm-"])
        assert isinstance(result, Tally)
        self.assertEqual(result.verdict, Verdict.WON)
        self.assertEqual(slept, [10.0, 10.0])

    def test_undecided_after_six_retries_is_not_master(self) -> None:
        result, slept = self.run_votes(["m--"] * 7)
        assert isinstance(result, NotMasterError)
        self.assertIn("undecided after 7 attempts", str(result))
        self.assertIn("n1.example.com (connection refused)", str(result))
        self.assertEqual(slept, [10.0] * 6)

    def test_undecided_then_lost(self) -> None:
        result, slept = self.run_votes(["m--", "moo"])
        assert isinstance(result, NotMasterError)
        self.assertEqual(slept, [10.0])
        assert result.tally is not None
        self.assertEqual(result.tally.verdict, Verdict.LOST)


class SsconfTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)

    def write(self, name: str, text: str) -> None:
        with open(os.path.join(self.dir, name), "w") as f:
            f.write(text)

    def test_reads_nodes_master_and_ips(self) -> None:
        self.write("ssconf_node_list", "node1.example.com\nnode2.example.com\n\nnode3.example.com\n")
        self.write("ssconf_master_node", "node1.example.com\n")
        self.write("ssconf_node_primary_ips", "node1.example.com 192.0.2.1\nnode2.example.com 192.0.2.2\n"
                   "node3.example.com not-an-ip\nbroken line here\n")
        nodes = read_ssconf(self.dir)
        self.assertEqual(nodes.nodes, ("node1.example.com", "node2.example.com", "node3.example.com"))
        self.assertEqual(nodes.master, "node1.example.com")
        self.assertEqual(dict(nodes.addresses), {"node1.example.com": "192.0.2.1", "node2.example.com": "192.0.2.2"})
        self.assertEqual(node_address(nodes, "node2.example.com"), "192.0.2.2")
        # no (valid) primary ip: resolved by name
        self.assertEqual(node_address(nodes, "node3.example.com", lambda n: "192.0.2.33"), "192.0.2.33")

    def test_unresolvable_node_is_a_noded_error(self) -> None:
        self.write("ssconf_node_list", "node1.example.com\n")
        nodes = read_ssconf(self.dir)

        def fail(name: str) -> str:
            raise OSError("Name or service not known")

        with self.assertRaises(NodedError) as cm:
            node_address(nodes, "node1.example.com", fail)
        self.assertIn("node1.example.com", str(cm.exception))

    def test_missing_node_list_is_a_setup_error_naming_the_file(self) -> None:
        with self.assertRaises(SetupError) as cm:
            read_ssconf(self.dir)
        self.assertIn(os.path.join(self.dir, "ssconf_node_list"), str(cm.exception))

    def test_empty_or_bad_node_list_is_a_setup_error(self) -> None:
        self.write("ssconf_node_list", "\n")
        self.assertRaises(SetupError, read_ssconf, self.dir)
        self.write("ssconf_node_list", "good.example.com\nbad name; rm -rf /\n")
        with self.assertRaises(SetupError) as cm:
            read_ssconf(self.dir)
        self.assertIn("bad name", str(cm.exception))
