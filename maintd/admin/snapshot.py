"""``ganeti-maintd-snapshot``: write the cluster model maintd sees as JSON.

    ganeti-maintd-snapshot [--rapi URL] [--rapi-user U --rapi-password-file F]
                           [--rapi-cert C | --rapi-insecure] [-o FILE]

The output is :func:`maintd.cluster.model.to_json` of the loaded cluster (the
snapshot file format the simulator can rebuild a cluster from).  Objects
the loader had to skip are listed in the document (``skipped``) and warned
about on stderr.  Exit status 0 on success, 1 on any RAPI or file error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from typing import Any, TextIO

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)

from maintd.cluster import model
from maintd.cluster.rapi.client import RapiClient
from maintd.cluster.rapi.errors import RapiError
from maintd.common.cli import ArgumentParser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = ArgumentParser(
        prog="ganeti-maintd-snapshot",
        description="Write the Ganeti cluster model maintd sees (over RAPI) as JSON.",
    )
    p.add_argument("--rapi", default="https://127.0.0.1:5080", metavar="URL")
    p.add_argument("--rapi-user", metavar="NAME")
    p.add_argument("--rapi-password-file", metavar="FILE")
    p.add_argument("--rapi-cert", default="/var/lib/ganeti/rapi.pem", metavar="FILE")
    p.add_argument("--rapi-insecure", action="store_true",
                   help="do not verify the RAPI certificate (labs only)")
    p.add_argument("--rapi-timeout", type=float, default=30.0, metavar="SECONDS")
    p.add_argument("-o", "--output", default="-", metavar="FILE",
                   help="output file (default: standard output)")
    p.add_argument("-d", "--debug", action="store_true")
    return p.parse_args(list(argv))


def write_atomically(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and rename."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".snapshot-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


async def snapshot(reactor: Any, args: argparse.Namespace, err: TextIO | None = None) -> int:
    err = err or sys.stderr
    try:
        client = RapiClient.create(
            args.rapi,
            reactor=reactor,
            user=args.rapi_user,
            password_file=args.rapi_password_file,
            cert=args.rapi_cert,
            insecure=args.rapi_insecure,
            timeout=args.rapi_timeout,
        )
    except RapiError as e:
        print(f"ganeti-maintd-snapshot: {e}", file=err)
        return 1
    try:
        cluster = await client.load_cluster()
    except RapiError as e:
        print(f"ganeti-maintd-snapshot: {e}", file=err)
        return 1
    finally:
        await client.close()
    data = (json.dumps(model.to_json(cluster), indent=1, sort_keys=True) + "\n").encode()
    try:
        if args.output == "-":
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        else:
            write_atomically(args.output, data)
    except OSError as e:
        print(f"ganeti-maintd-snapshot: cannot write {args.output}: {e}", file=err)
        return 1
    print(
        f"ganeti-maintd-snapshot: {cluster.name}: {len(cluster.groups)} groups, "
        f"{len(cluster.nodes)} nodes, {len(cluster.instances)} instances"
        + (f", {len(cluster.skipped)} skipped" if cluster.skipped else ""),
        file=err,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    level = LogLevel.debug if args.debug else LogLevel.warn
    globalLogBeginner.beginLoggingTo(
        [
            FilteringLogObserver(
                textFileLogObserver(sys.stderr),
                [LogLevelFilterPredicate(defaultLogLevel=level)],
            )
        ],
        redirectStandardIO=False,
    )

    def run(reactor: Any) -> Deferred[None]:
        async def go() -> None:
            status = await snapshot(reactor, args)
            if status:
                raise SystemExit(status)

        return Deferred.fromCoroutine(go())

    task.react(run)
