"""`guard quarantine list` and `guard quarantine export` (parsed in arguments.py). A bad argument
is one line naming it; the store is opened as it is, while a gateway may still be writing it (a
WAL reader sees the records committed when it starts reading)."""

from __future__ import annotations

import argparse
import datetime

from guard.serving.logs import loggable
from guard.serving.quarantine.records import Stored
from guard.serving.quarantine.store import NotAQuarantine, QuarantineStore
from guard.tools.quarantine.export import ExportError, export_records, write_export


def run(args: argparse.Namespace) -> int:
    prog = f"guard quarantine {args.action}"
    if args.action == "export" and args.out.suffix != ".npz":
        raise SystemExit(f"{prog}: --out {args.out}: expected a file name ending in .npz")
    try:
        store = QuarantineStore.open(args.dir, create=False)
    except NotAQuarantine as exc:
        raise SystemExit(f"{prog}: --dir {exc}") from None
    try:
        models = store.models()
        if args.model is not None and args.model not in models:
            raise SystemExit(
                f"{prog}: --model {args.model}: no records of that model in {args.dir} "
                f"(records of: {', '.join(models) or 'none'})"
            )
        if args.action == "list":
            for record in store.records(args.model, with_inputs=False):
                print(line_of(record))
            return 0
        return _export(store, args, prog, models)
    finally:
        store.close()


def line_of(record: Stored) -> str:
    """id, time (UTC), model and version, verdict, score, detectors, identity, request id, each
    input's datatype and shape, and the bytes the record counts against the cap. Client strings
    (identity, request id) are escaped as in the gateway's log lines."""
    when = datetime.datetime.fromtimestamp(record.time, datetime.UTC).isoformat(timespec="milliseconds")
    inputs = " ".join(f"{i.name}:{i.datatype}{list(i.shape)}".replace(" ", "") for i in record.inputs)
    return (
        f"{record.id} {when} {record.model}:{record.version} {record.verdict} score={record.score:.3f} "
        f"by={','.join(record.flagged_by) or '-'} identity={loggable(record.identity)} "
        f"id={loggable(record.request_id)} {inputs} bytes={record.size}"
    )


def _export(store: QuarantineStore, args: argparse.Namespace, prog: str, models: list[str]) -> int:
    model = args.model
    if model is None:
        if len(models) > 1:
            raise SystemExit(f"{prog}: records of several models ({', '.join(models)}): choose one with --model")
        if not models:
            raise SystemExit(f"{prog}: --dir {args.dir}: the quarantine holds no records")
        model = models[0]
    try:
        export = export_records(list(store.records(model)))
    except ExportError as exc:
        raise SystemExit(f"{prog}: {exc}") from None
    sidecar = write_export(export, args.out)
    x = export.x
    print(
        f"{len(export.sidecar)} records of {model}: {len(x)} samples x {list(x.shape[1:])} {x.dtype} -> {args.out}"
        f"{'' if export.y is not None else ' (no y: the model answered no classes)'}; metadata -> {sidecar}"
    )
    return 0
