"""``patchd``: the daemon's executable, with local one-shot commands.

``patchd upgrade|install|remove`` runs one transaction in this process and
``patchd recover`` converges interrupted ones; the D-Bus service will be
another subcommand of the same program. Admins normally use ``patchctl``
(D-Bus); these commands serve recovery, the demo, tests and benchmarks, and
need root.

Exit codes: 0 done, 1 failed with the system untouched, 2 failed and rolled
back, 3 rollback failed (needs an administrator), 64 bad usage, 70 bug.
``recover`` exits 0 when everything converged, 3 when a rollback failed.
"""

import argparse
import json
import os
import sys
from typing import List, Optional

from patchd.core import errors, names
from patchd.core.model import Operation, Request, State, Transaction
from patchd.daemon import compose, logsetup

EXIT_CODES = {State.DONE: 0, State.FAILED: 1, State.ROLLED_BACK: 2, State.ROLLBACK_FAILED: 3}
EXIT_USAGE = 64
EXIT_BUG = 70


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="patchd", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=names.DEFAULT_ROOT, help="managed root (default /)")
    parser.add_argument("--state-dir", default=names.DEFAULT_STATE_DIR)
    parser.add_argument("--snapshot-dir", default=names.DEFAULT_SNAPSHOT_DIR)
    parser.add_argument("--keep", type=int, default=names.DEFAULT_SNAPSHOT_KEEP,
                        help="snapshots of this many transactions are kept")
    parser.add_argument("--lock-timeout", type=float, default=names.DEFAULT_LOCK_TIMEOUT_S,
                        help="seconds to wait for another package tool")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command")
    sub.required = True
    sub.add_parser("refresh", help="fetch repository metadata")
    sub.add_parser("updates", help="show the plan of a full upgrade")
    plan = sub.add_parser("plan", help="show the exact plan of a request, change nothing")
    plan.add_argument("operation", choices=[o.value for o in Operation])
    plan.add_argument("packages", nargs="*")
    for op in Operation:
        cmd = sub.add_parser(op.value, help="{} packages in one transaction".format(op.value))
        cmd.add_argument("packages", nargs="*" if op is Operation.UPGRADE else "+")
        cmd.add_argument("--id", help=argparse.SUPPRESS)   # tests name transactions
    sub.add_parser("recover", help="converge transactions interrupted by a crash")
    history = sub.add_parser("history", help="past transactions, newest first")
    history.add_argument("--limit", type=int, default=20)
    snapshots = sub.add_parser("snapshots", help="list patchd's snapshots, or delete one")
    snapshots.add_argument("--delete", metavar="NAME", help="delete this snapshot")
    sub.add_parser("installed", help="installed packages")
    return parser


class HumanOutput:
    """Prints each state change in words; silent with --json."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._shown = (None, -1)   # (effect, last tenth shown)
        # A duplicate of stdout: while a step runs, fd 1 goes to the dpkg log.
        sys.stdout.flush()
        self._stream = os.fdopen(os.dup(1), "w", buffering=1)

    def on_progress(self, tx_id: str, effect: str, fraction: float, message: str) -> None:
        """One line per tenth of an apply or rollback, not one per dpkg event."""
        if effect not in ("Apply", "Rollback"):
            return
        tenth = int(fraction * 10)
        if self._shown[0] != effect or tenth > self._shown[1]:
            self._shown = (effect, tenth)
            self.say("    {:3d}% {}".format(tenth * 10, message))

    def say(self, text: str) -> None:
        if self.enabled:
            print(text, file=self._stream, flush=True)

    def on_state(self, tx: Transaction, intent: str) -> None:
        state = tx.state
        if state is State.RESOLVED and tx.plan is not None:
            self.say("  plan, {} change(s):".format(len(tx.plan.changes)))
            for change in tx.plan.changes:
                self.say("    " + change.describe())
        elif state is State.SNAPSHOTTING:
            self.say("  taking snapshot " + tx.snapshot.name if tx.snapshot else "")
        elif state is State.ROLLING_BACK:
            self.say("  FAILED: {}".format(tx.error.message if tx.error else ""))
            self.say("  rolling back to snapshot {} ...".format(tx.snapshot.name))
        elif state in EXIT_CODES:
            self.say(_summary(tx))
        else:
            self.say("  {} ...".format(state.value.replace("_", " ")))


def _summary(tx: Transaction) -> str:
    count = len(tx.plan.changes) if tx.plan else 0
    if tx.state is State.DONE:
        return "done: {} package(s) changed".format(count) if count else "done: nothing to do"
    text = "{}: {}".format(tx.state.value.replace("_", " "), tx.error.message if tx.error else "")
    if tx.error is not None and tx.error.hint:
        text += "\n  what to do: " + tx.error.hint
    return text


def main(argv: Optional[List[str]] = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else 0
    logsetup.configure(args.verbose)
    config = compose.Config(args.root, args.state_dir, args.snapshot_dir, args.keep,
                            args.lock_timeout)
    out = HumanOutput(not args.json)
    try:
        return _dispatch(args, config, out)
    except errors.PatchdError as exc:
        if args.json:
            print(json.dumps({"error": exc.to_dict()}))
        else:
            print("error: {}\n  what to do: {}".format(exc.message, exc.hint), file=sys.stderr)
        return 1


def _dispatch(args, config: compose.Config, out: HumanOutput) -> int:
    command = args.command
    if command == "history":
        journal = compose.build_journal(config)
        entries = journal.history(limit=args.limit)
        _emit(args, [e.transaction.to_dict() for e in entries],
              ["{}  {:<15} {:<8} {}".format(e.transaction.id, e.transaction.state.value,
                                           e.transaction.request.operation.value,
                                           " ".join(e.transaction.request.packages))
               for e in entries])
        return 0
    if command == "snapshots":
        snapshotter = compose.build_snapshotter(config)
        refs = snapshotter.list()
        if args.delete:
            _delete_snapshot(snapshotter, refs, args.delete, compose.build_journal(config))
            refs = snapshotter.list()
        _emit(args, [r.to_dict() for r in refs], [r.name for r in refs])
        return 0
    backend = compose.build_backend(config)
    if command == "installed":
        packages = backend.installed()
        _emit(args, packages, ["{name} {version} {arch}".format(**p) for p in packages])
        return 0
    if command == "refresh":
        backend.refresh()
        out.say("repositories refreshed")
        return 0
    if command in ("updates", "plan"):
        request = (Request(Operation.UPGRADE) if command == "updates"
                   else Request(Operation(args.operation), tuple(args.packages)))
        plan = backend.plan(request)
        _emit(args, plan.to_dict(), [c.describe() for c in plan.changes] or ["nothing to do"])
        return 0
    runner = compose.build_runner(config, on_state=out.on_state, on_progress=out.on_progress)
    if command == "recover":
        recovered = runner.recover()
        _emit(args, [t.to_dict() for t in recovered],
              ["{}: {}".format(t.id, t.state.value) for t in recovered]
              or ["nothing to recover"])
        # Converging is success; only a failed rollback needs the admin.
        failed = [t for t in recovered if t.state is State.ROLLBACK_FAILED]
        return EXIT_CODES[State.ROLLBACK_FAILED] if failed else 0
    request = Request(Operation(command), tuple(args.packages))
    out.say("transaction: {} {}".format(command, " ".join(args.packages)).rstrip())
    tx = runner.run(request, tx_id=args.id)
    if args.json:
        print(json.dumps(tx.to_dict()))
    return EXIT_CODES.get(tx.state, EXIT_BUG)


def _delete_snapshot(snapshotter, refs, name: str, journal) -> None:
    """Delete a snapshot unless an unfinished transaction still needs it."""
    matching = [r for r in refs if r.name == name]
    if not matching:
        raise errors.InvalidRequest("no patchd snapshot named {}".format(name),
                                    "List them with: patchd snapshots")
    parsed = names.parse_snapshot_name(name)
    if parsed and parsed[0] in {t.id for t in journal.unfinished()}:
        raise errors.InvalidRequest(
            "snapshot {} belongs to an unfinished transaction".format(name),
            "Run patchd recover first.")
    snapshotter.delete(matching[0])


def _emit(args, data, lines: List[str]) -> None:
    if args.json:
        print(json.dumps(data))
    else:
        for line in lines:
            print(line)


if __name__ == "__main__":
    sys.exit(main())
