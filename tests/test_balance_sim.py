"""The balance step in real rounds against the simulator (real RAPI client, TLS)."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import TestCase

from maintd.daemon.steps.balance import balance_step
from maintd.daemon.steps.jobs import jobs_step
from maintd.daemon.steps.snapshot import snapshot_step
from maintd.decide.balance.score import build_state, compute_cv
from tests.test_harep_sim import SimHarness, drbd, scenario


class BalanceHarness(SimHarness):
    async def balance_round(self, **cfg: Any) -> Any:
        return await self.round(steps=[jobs_step, snapshot_step, balance_step], **cfg)


def stacked() -> Any:
    # Everything on n1/n2; n3..n6 empty: plenty to balance.
    insts = [drbd(f"i{k}", "n1" if k % 2 else "n2", "n2" if k % 2 else "n1") for k in range(8)]
    return scenario(nodes=6, instances=insts)


class BalanceSimTests(TestCase):
    timeout = 180

    async def test_first_jobset_runs_and_improves_the_score(self) -> None:
        h = BalanceHarness(self, stacked())
        before = compute_cv(build_state(await h.rapi.load_cluster()))
        ctx = await h.balance_round(balance=True)
        moved = [n for n in ctx.notes if n.get("step") == "balance" and "instance" in n]
        self.assertTrue(moved, ctx.notes)
        self.assertTrue(ctx.state.jobs)
        # one jobset: no node shared between its moves
        await h.settle()
        for job in ctx.state.jobs:
            self.assertTrue((await h.rapi.get_job(job)).ok, job)
        after = compute_cv(build_state(await h.rapi.load_cluster()))
        self.assertLess(after, before)

    async def test_dry_run_submits_nothing(self) -> None:
        h = BalanceHarness(self, stacked())
        ctx = await h.balance_round(balance=True, dry_run=True)
        moved = [n for n in ctx.notes if n.get("step") == "balance" and "instance" in n]
        self.assertTrue(moved)
        self.assertEqual(ctx.state.jobs, ())
        self.assertEqual(await h.rapi.jobs_bulk(), [])
