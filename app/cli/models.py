"""`ffclip-engine models list | import PATH | verify | fetch` — the model store from the command line."""

from __future__ import annotations

import argparse
import sys
from typing import IO

from ffclip.engine.checkpoints.errors import CheckpointError
from ffclip.engine.checkpoints.layouts import KINDS
from ffclip.engine.domains import DOMAINS, high_fidelity_models, needed_models
from ffclip.engine.store import SPECS, ModelStore, VerifyResult


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", metavar="DIR", help="model store folder (default: XDG data dir)")
    # sub-commands accept --models too; SUPPRESS keeps a value given before the sub-command
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--models", metavar="DIR", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub.add_parser("list", parents=[common], help="show each model file and its state")
    imp = sub.add_parser(
        "import", parents=[common], help="check a checkpoint (recognised by its content) and put it in the store"
    )
    imp.add_argument("path", metavar="PATH", help="any file name; OpenAI's TorchScript ViT-B-32.pt too")
    imp.add_argument("--kind", choices=KINDS, help="expected layout (default: detected)")
    imp.add_argument("--name", choices=[s.name for s in SPECS], help="store entry (default: from the layout)")
    ver = sub.add_parser("verify", parents=[common], help="check structure and recorded sha256 of the files")
    ver.add_argument("names", nargs="*", metavar="NAME")
    ver.add_argument("--accept", action="store_true", help="record the current sha256 of changed files")
    fet = sub.add_parser("fetch", parents=[common], help="download the official files (resumable)")
    fet.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"any of {', '.join(s.name for s in SPECS)}, or a domain ({', '.join(DOMAINS)}: its e4e, FFCLIP "
        "and CLIP files), or high / high-car (HyperStyle's files for --fidelity high) "
        "(default: what serve/edit need for faces)",
    )
    fet.add_argument("--all", action="store_true", help="every known model (training, other domains)")
    fet.add_argument(
        "--from",
        dest="source",
        metavar="URL",
        help="download the one NAME given from this mirror instead of its published source",
    )
    fet.add_argument("--retries", type=int, default=5, help="attempts without progress before giving up")
    fet.add_argument(
        "--stall-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds without data before a connection counts as dropped",
    )
    fet.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    store = ModelStore(args.models)
    out = sys.stdout
    try:
        if args.action == "list":
            return cmd_list(store, out)
        if args.action == "import":
            return cmd_import(store, args.path, args.kind, args.name, out)
        if args.action == "verify":
            return cmd_verify(store, args.names, args.accept, out)
        return cmd_fetch(store, args, out)
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.2f} GB"


def _state(store: ModelStore, name: str, index: dict) -> str:
    path, part = store.path(name), store.part_path(name)
    entry = index.get(name)
    if path.is_file():
        size = path.stat().st_size
        if entry and entry.get("sha256"):
            same = entry.get("size") == size
            trust = store.trust(name, entry["sha256"], entry.get("trust"))
            return f"{trust} {_size(size)}" if same else f"CHANGED since verified ({_size(size)})"
        return f"present, not verified ({_size(size)})"
    if part.is_file():
        return f"missing; partial download {_size(part.stat().st_size)}"
    return "missing"


def cmd_list(store: ModelStore, out: IO[str]) -> int:
    try:
        index = store.index()
    except CheckpointError as exc:
        print(f"warning: {exc}", file=sys.stderr)
        index = {}
    print(f"model store: {store.root}", file=out)
    needed = store.needed()
    rows = [
        (s.name, s.filename, s.kind, _state(store, s.name, index), "" if s.name in needed else "(optional)")
        for s in SPECS
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        print(
            "  "
            + "  ".join(c.ljust(w) for c, w in zip(row[:3], widths, strict=True))
            + "  "
            + " ".join(row[3:]).rstrip(),
            file=out,
        )
    print(f"serve/edit need: {', '.join(needed)}{_stylegan2_note(needed)}", file=out)
    missing = store.missing(needed)
    if missing:
        print(f"missing for serve/edit: {', '.join(missing)}; get them with `{store.fetch_hint}`", file=out)
    high = store.high_fidelity()
    lacking = store.missing(high)
    state = f"missing {', '.join(lacking)}; get them with `{store.fetch_hint} high`" if lacking else "present"
    print(f"fidelity high (HyperStyle) needs: {', '.join(high)} ({state})", file=out)
    return 0


def _stylegan2_note(needed: list[str]) -> str:
    if "stylegan2" in needed:
        return " (stylegan2: the FFCLIP file in the store is mapper-only)"
    return " (stylegan2 only with a mapper-only FFCLIP file)"


def cmd_import(store: ModelStore, path: str, kind: str | None, name: str | None, out: IO[str]) -> int:
    try:
        stored, result = store.import_file(path, kind=kind, name=name)
    except (CheckpointError, OSError) as exc:
        print(f"import refused: {exc}", file=sys.stderr)
        return 1
    info = ", ".join(f"{k}={v}" for k, v in result.info.items())
    print(f"imported {path} as {stored} ({info})", file=out)
    print(f"  -> {store.path(stored)}\n  sha256 {result.sha256}", file=out)
    return 0


def _report(result: VerifyResult, out: IO[str]) -> None:
    if result.ok:
        note = "sha256 recorded" if result.status == "recorded" else "matches the recorded sha256"
        trust = f"; {result.trust}" if result.trust else ""
        print(f"ok       {result.name}: {note} {result.sha256}{trust}", file=out)
    else:
        print(f"{result.status.upper():8} {result.name}: {result.message}", file=out)


def cmd_verify(store: ModelStore, names: list[str], accept: bool, out: IO[str]) -> int:
    named = bool(names)
    names = names or [s.name for s in SPECS]
    failed = 0
    absent = []
    for name in names:
        store.spec(name)  # unknown names fail before any work
        if not store.present(name) and not named:
            absent.append(name)
            continue
        result = store.verify(name, accept=accept)
        _report(result, out)
        failed += not result.ok
    required_absent = [n for n in absent if n in store.needed()]
    if required_absent:
        print(f"not in the store: {', '.join(required_absent)} (`{store.fetch_hint}`)", file=out)
    return 1 if failed else 0


HIGH = "high"  # `models fetch high`: HyperStyle's files for faces (`fidelity high`)


def expand_domains(names: list[str]) -> list[str]:
    """Store names, a domain name (face, car, church) standing for the files its edits need, `high`
    for the faces' HyperStyle files (`high-car` for the cars')."""
    expanded: list[str] = []
    for name in names:
        if name in DOMAINS:
            expanded += needed_models(name)
        elif name == HIGH or name.startswith(f"{HIGH}-") and name[len(HIGH) + 1 :] in DOMAINS:
            expanded += high_fidelity_models(name[len(HIGH) + 1 :] or "face")
        else:
            expanded.append(name)
    return list(dict.fromkeys(expanded))


def cmd_fetch(store: ModelStore, args: argparse.Namespace, out: IO[str]) -> int:
    if args.source and len(args.names) != 1:
        print("error: --from URL takes exactly one model NAME", file=sys.stderr)
        return 2
    explicit = expand_domains(args.names) or ([s.name for s in SPECS] if args.all else [])
    for name in explicit:
        store.spec(name)  # unknown names fail before any download
    options = {"retries": args.retries, "stall_timeout": args.stall_timeout, "progress": not args.quiet}
    if args.source:
        options["url"] = args.source
    shown: set[str | None] = set()
    done: list[str] = []
    failed = 0
    # without names: what serve/edit need, asked again after each file (a mapper-only FFCLIP file
    # brings stylegan2 in)
    while name := next((n for n in (explicit or store.needed()) if n not in done), None):
        spec = store.spec(name)
        if spec.licence not in shown and not store.present(name):
            shown.add(spec.licence)
            if spec.licence:
                print(spec.licence + "\n", file=out)
        print(f"{spec.name}: {spec.description} -> {store.path(spec.name)}", file=out)
        out.flush()
        result = store.fetch(spec.name, **options)
        _report(result, out)
        failed += not result.ok
        done.append(name)
    return 1 if failed else 0
