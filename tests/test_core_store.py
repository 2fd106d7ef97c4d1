"""The durable state store (maintd.daemon.store)."""

from __future__ import annotations

import json
import os
from unittest import mock

import attrs
from twisted.trial.unittest import SynchronousTestCase

from maintd.daemon import store as store_mod
from maintd.daemon.state import Action, Incident, MaintState, RepairStatus
from maintd.daemon.store import StateStore, StoreError


def incident(n: int, status: RepairStatus = RepairStatus.PENDING) -> Incident:
    return Incident(
        uuid=f"uuid-{n}",
        node=f"node-uuid-{n}",
        node_name=f"node{n}.example.com",
        original={"status": "evacuate", "command": None, "details": {"disk": n}},
        action=Action.EVACUATE,
        status=status,
        jobs=(100 + n, 200 + n),
        tag=f"maintd:repairready:uuid-{n}",
        ctime=1000.0 + n,
        mtime=1001.0 + n,
        serial_no=2,
    )


def sample_state() -> MaintState:
    return MaintState(
        incidents=(incident(1), incident(2, RepairStatus.FAILED)),
        jobs=(101, 102),
        evacuated=("inst1.example.com",),
        last_round={"number": 3, "result": "ok"},
    )


class StoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())

    def open(self) -> StateStore:
        s = StateStore.open(self.dir)
        self.addCleanup(s.close)
        return s

    def test_new_dir_starts_empty_and_private(self) -> None:
        s = self.open()
        self.assertEqual(s.state, MaintState())
        self.assertEqual(os.stat(self.dir).st_mode & 0o777, 0o700)

    def test_round_trip_survives_restart(self) -> None:
        s = self.open()
        s.commit(sample_state())
        self.assertEqual(s.state, sample_state())
        s.close()
        again = self.open()
        self.assertEqual(again.state, sample_state())
        self.assertEqual(os.stat(again.path).st_mode & 0o777, 0o600)

    def test_file_is_versioned_json(self) -> None:
        s = self.open()
        s.commit(sample_state())
        with open(s.path) as f:
            doc = json.load(f)
        self.assertEqual(doc["format"], "ganeti-maintd-state")
        self.assertEqual(doc["schema"], 1)
        self.assertEqual(doc["incidents"][1]["repair-status"], "failed")
        self.assertEqual(doc, {"format": "ganeti-maintd-state", **sample_state().to_json(),
                               "serial": 1})

    def test_every_commit_bumps_the_serial(self) -> None:
        s = self.open()
        self.assertEqual(s.state.serial, 0)
        s.commit(sample_state())
        self.assertEqual(s.state.serial, 1)
        s.commit(sample_state())  # same content: nothing written
        self.assertEqual(s.state.serial, 1)
        s.commit(attrs.evolve(sample_state(), jobs=(7,)))
        self.assertEqual(s.state.serial, 2)
        # a state with a higher serial (a replica taken at start) keeps it rising
        s.commit(attrs.evolve(MaintState(jobs=(8,)), serial=40))
        self.assertEqual((s.state.serial, s.state.jobs), (41, (8,)))
        s.raise_serial(60)
        s.close()
        self.assertEqual(self.open().state.serial, 61)

    def test_crash_between_temp_write_and_rename_keeps_the_old_state(self) -> None:
        s = self.open()
        s.commit(sample_state())
        newer = sample_state().without_incident("uuid-1")
        # The process dies after writing and syncing the temp file, before
        # the rename: exactly what is on disk then.
        with open(s.tmp_path, "wb") as f:
            f.write(store_mod.encode(newer)[:-20])
        s.close()
        again = self.open()
        self.assertEqual(again.state, sample_state())
        self.assertFalse(os.path.exists(again.tmp_path))

    def test_failed_rename_reports_and_keeps_the_old_state(self) -> None:
        s = self.open()
        s.commit(sample_state())
        with mock.patch.object(os, "replace", side_effect=OSError(28, "No space left on device")):
            e = self.assertRaises(StoreError, s.commit, MaintState())
        self.assertIn(s.path, str(e))
        self.assertEqual(s.state, sample_state())
        s.close()
        self.assertEqual(self.open().state, sample_state())

    def test_commit_is_synced_before_it_returns(self) -> None:
        s = self.open()
        calls: list[str] = []
        real_fsync, real_replace = os.fsync, os.replace

        def fsync(fd: int) -> None:
            calls.append("fsync")
            real_fsync(fd)

        def replace(a: str, b: str) -> None:
            calls.append("rename")
            real_replace(a, b)

        with mock.patch.object(os, "fsync", fsync), mock.patch.object(os, "replace", replace):
            s.commit(sample_state())
        # file data synced, renamed into place, then the directory synced
        self.assertEqual(calls, ["fsync", "rename", "fsync"])

    def test_corrupt_file_is_a_startup_error_naming_the_file(self) -> None:
        os.makedirs(self.dir)
        path = os.path.join(self.dir, "state.json")
        for content in (b"", b"{not json", b"[1, 2]", b'{"format": "other"}', b"\xff\xfe"):
            with open(path, "wb") as f:
                f.write(content)
            e = self.assertRaises(StoreError, StateStore.open, self.dir)
            self.assertIn(path, str(e))
            # nothing was dropped or rewritten
            with open(path, "rb") as f:
                self.assertEqual(f.read(), content)

    def test_unknown_schema_is_refused(self) -> None:
        os.makedirs(self.dir)
        doc = {"format": "ganeti-maintd-state", **sample_state().to_json(), "schema": 99}
        with open(os.path.join(self.dir, "state.json"), "w") as f:
            json.dump(doc, f)
        e = self.assertRaises(StoreError, StateStore.open, self.dir)
        self.assertIn("schema", str(e))

    def test_bad_incident_is_refused(self) -> None:
        os.makedirs(self.dir)
        doc = json.loads(store_mod.encode(sample_state()))
        doc["incidents"][0]["repair-status"] = "exploded"
        with open(os.path.join(self.dir, "state.json"), "w") as f:
            json.dump(doc, f)
        e = self.assertRaises(StoreError, StateStore.open, self.dir)
        self.assertIn("exploded", str(e))

    def write_raw(self, content: bytes) -> str:
        os.makedirs(self.dir, exist_ok=True)
        path = os.path.join(self.dir, "state.json")
        with open(path, "wb") as f:
            f.write(content)
        return path

    def test_deeply_nested_file_is_a_startup_error_naming_the_file(self) -> None:
        # json.loads raises RecursionError for this, which named nothing and
        # stopped the start with a traceback.
        for content in (b"[" * 200_000 + b"]" * 200_000, b'{"a":' * 200_000):
            path = self.write_raw(content)
            e = self.assertRaises(StoreError, StateStore.open, self.dir)
            self.assertIn(path, str(e))
            self.assertIn("nested", str(e))

    def test_nan_and_duplicate_keys_are_refused(self) -> None:
        good = store_mod.encode(sample_state())
        for content in (
            good.replace(b'"ctime":1001.0', b'"ctime":NaN'),
            good.replace(b'"schema":1', b'"schema":1,"schema":1'),
        ):
            self.assertNotEqual(content, good)
            path = self.write_raw(content)
            e = self.assertRaises(StoreError, StateStore.open, self.dir)
            self.assertIn(path, str(e))

    def test_the_same_incident_uuid_twice_is_refused(self) -> None:
        doc = json.loads(store_mod.encode(sample_state()))
        twin = dict(doc["incidents"][0], node="node-uuid-9", **{"node-name": "node9.example.com"})
        doc["incidents"].append(twin)
        path = self.write_raw(json.dumps(doc).encode())
        e = self.assertRaises(StoreError, StateStore.open, self.dir)
        self.assertIn(path, str(e))
        self.assertIn("incident 3 (uuid-1): same uuid as incident 1", str(e))

    def test_unreadable_dir_is_an_error_naming_it(self) -> None:
        blocker = os.path.abspath(self.mktemp())
        with open(blocker, "w") as f:
            f.write("a file, not a dir")
        e = self.assertRaises(StoreError, StateStore.open, os.path.join(blocker, "state"))
        self.assertIn(blocker, str(e))

    def test_second_daemon_on_the_same_dir_is_refused(self) -> None:
        self.open()
        e = self.assertRaises(StoreError, StateStore.open, self.dir)
        self.assertIn("in use", str(e))

    def test_listeners_see_every_committed_state(self) -> None:
        s = self.open()
        seen: list[MaintState] = []
        s.add_listener(seen.append)
        s.commit(sample_state())
        s.commit(sample_state())  # unchanged: no write, no call
        self.assertEqual(seen, [MaintState(), sample_state()])
