"""maintd.cluster.rapi.jobs: job objects of a real Ganeti 3.0 cluster."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from maintd.cluster.rapi.jobs import JobResult, format_op_error, parse_job
from tests.test_rapi_helpers import sample


class ParseJobTests(SynchronousTestCase):
    def test_success(self) -> None:
        r = parse_job(20, sample("job-success.json"))
        self.assertEqual(r, JobResult(20, "success", "", summary=("TAGS_SET",)))
        self.assertTrue(r.final and r.ok)

    def test_opcodes_and_reasons_from_a_real_job(self) -> None:
        r = parse_job(20, sample("job-success.json"))
        (op,) = r.ops
        self.assertEqual(op.op_id, "OP_TAGS_SET")
        # The request's reason=, as Ganeti 3.0 put it in the reason trail.
        self.assertEqual(op.reasons, ("maintd test",))
        self.assertEqual(r.received, 1795575763.688294)
        r = parse_job(24, sample("job-migrate-file.json"))
        self.assertEqual(
            (r.ops[0].op_id, r.ops[0].instance, r.ops[0].reasons),
            ("OP_INSTANCE_MIGRATE", "inst5.sandbox.test", ()),
        )
        self.assertEqual(parse_job(1, {"status": "success", "ops": "junk"}).ops, ())

    def test_error_texts(self) -> None:
        r = parse_job(27, sample("job-node-drain-master.json"))
        self.assertEqual(r.status, "error")
        self.assertEqual(
            r.error,
            "OpPrereqError: The master role can be changed only via master-failover "
            "(wrong_input)",
        )
        self.assertTrue(r.final)
        self.assertFalse(r.ok)
        r = parse_job(28, sample("job-node-evacuate.json"))
        self.assertTrue(r.error.startswith("OpExecError: Unable to evacuate instances"))
        r = parse_job(24, sample("job-migrate-file.json"))
        self.assertIn("does not allow migrations", r.error)

    def test_all_null_is_lost_not_success(self) -> None:
        r = parse_job(999999, sample("err-404-job.json"))
        self.assertEqual(r.status, "lost")
        self.assertTrue(r.final)
        self.assertFalse(r.ok)

    def test_pending(self) -> None:
        for status in ("queued", "waiting", "running", "canceling"):
            doc = dict(sample("job-success.json"), status=status)
            r = parse_job(20, doc)
            self.assertFalse(r.final, status)
            self.assertEqual(r.error, "")

    def test_bad_objects(self) -> None:
        self.assertRaises(ValueError, parse_job, 1, [1, 2])
        self.assertRaises(ValueError, parse_job, 1, {"status": "exploded"})

    def test_format_op_error_fallbacks(self) -> None:
        self.assertEqual(format_op_error(["OpExecError", "x"]), "OpExecError: x")
        self.assertEqual(format_op_error("plain"), "plain")
