"""Voice prompts and who records them: ``ivr prompts ...`` and ``ivr operators ...``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import Settings
from .common import EXIT_USAGE, CommandError, command, emit, open_db, with_json

if TYPE_CHECKING:
    from ..prompts import PromptStore


def _langs(text: str) -> tuple[str, ...]:
    langs = tuple(part.strip() for part in text.split(",") if part.strip())
    if not langs:
        raise argparse.ArgumentTypeError("give languages like en,es")
    return langs


def open_store(settings: Settings, store_dir: Path | None = None) -> PromptStore:
    """The prompt store of the configured Asterisk instance, or the one in ``store_dir``."""
    from ..asterisk import AsteriskSetupError, instance_for, resolve_install
    from ..prompts import PromptStore

    if store_dir is not None:
        try:
            install = resolve_install(settings.asterisk_mode, settings.asterisk_sandbox_dir,
                                      build=False)
        except AsteriskSetupError:
            return PromptStore(store_dir.resolve(), str(store_dir.resolve()))
        return PromptStore.at(store_dir, install)
    try:
        return PromptStore.for_instance(instance_for(settings, build=False))
    except AsteriskSetupError as exc:
        raise CommandError(f"{exc} (or give --store DIR)", "asterisk") from None


# --------------------------------------------------------------------------- prompts


@command
def cmd_prompts(settings: Settings, args: argparse.Namespace) -> int:
    from ..prompts import load_catalogue

    catalogue = load_catalogue(args.catalogue)
    store = open_store(settings, args.store)
    action = args.action
    if action == "build":
        from ..prompts.build import build

        report = build(catalogue, store, langs=args.lang, engine=args.engine, force=args.force,
                       progress=not args.quiet)
        emit(args, {"made": report.made, "up_to_date": len(report.up_to_date),
                     "recorded": len(report.recorded), "store": str(store.host_dir)},
              f"prompts in {store.host_dir}: {report.summary()}")
        return 0
    if action == "import":
        from ..prompts.build import import_recordings

        done = import_recordings(catalogue, store, args.directory, args.lang,
                                 progress=not args.quiet)
        rows = [{"id": item.prompt.id, "language": item.lang, "file": item.path.name,
                 "duration": round(seconds, 2)} for item, seconds in done]
        emit(args, {"imported": rows}, "\n".join(
            f"{r['id']} ({r['language']}) <- {r['file']}  {r['duration']:.2f}s" for r in rows)
            + f"\n{len(rows)} recordings imported")
        return 0
    if action == "status":
        return _status(catalogue, store, args)
    if action == "history":
        return _history(catalogue, store, args)
    if action == "restore":
        catalogue.get(args.id)
        lang = args.lang or catalogue.default_language
        catalogue.check_languages([lang])
        version = store.restore(args.id, lang, args.version)
        emit(args, {"id": args.id, "language": lang, "current": version.version,
                     "source": version.source},
              f"{args.id} ({lang}): version {version.version} ({version.source}) is current")
        return 0
    raise CommandError(f"unknown action {action}", "usage", EXIT_USAGE)


def _status(catalogue, store, args: argparse.Namespace) -> int:  # type: ignore[no-untyped-def]
    from ..prompts.status import prompt_status

    rows: list[dict[str, Any]] = [
        {"id": st.prompt.id, "number": st.prompt.number, "language": st.lang,
         "source": st.source, "version": st.version, "duration": st.duration,
         "note": st.note}
        for st in prompt_status(catalogue, store, args.lang or catalogue.languages)]
    counts = {s: sum(r["source"] == s for r in rows) for s in ("tts", "recorded", "missing")}
    if args.json:
        print(json.dumps({"store": str(store.host_dir), "prompts": rows, "counts": counts},
                         indent=2, ensure_ascii=False))
        return 0
    print(f"{'id':26} {'no.':>4} {'lang':4} {'source':9} {'ver':>3} {'duration':>8}  note")
    for r in rows:
        duration = f"{r['duration']:.2f}s" if r["duration"] is not None else "-"
        version = r["version"] if r["version"] is not None else "-"
        print(f"{r['id']:26} {r['number']:>4} {r['language']:4} {r['source']:9} {version:>3} "
              f"{duration:>8}  {r['note']}".rstrip())
    print(f"{counts['tts']} speech, {counts['recorded']} recorded, {counts['missing']} missing "
          f"({store.host_dir})")
    return 0


def _history(catalogue, store, args: argparse.Namespace) -> int:  # type: ignore[no-untyped-def]
    catalogue.get(args.id)
    langs = catalogue.check_languages(args.lang or catalogue.languages)
    manifest = store.manifest()
    data = {}
    lines = []
    for lang in langs:
        history = manifest.get(args.id, lang)
        versions = [v.to_json() | {"current": history.current == v.version}
                    for v in (history.versions if history else [])]
        data[lang] = versions
        lines.append(f"{args.id} ({lang}):" + ("" if versions else " no versions"))
        for v in versions:
            mark = "*" if v["current"] else " "
            who = v.get("by") or v.get("origin") or v.get("engine") or ""
            lines.append(f" {mark} v{v['version']:<3} {v['source']:8} {v['duration']:6.2f}s  "
                         f"{v['created_at']}  {who}")
    emit(args, {"id": args.id, "languages": data}, "\n".join(lines))
    return 0


# --------------------------------------------------------------------------- operators


@command
def cmd_operators(settings: Settings, args: argparse.Namespace) -> int:
    from ..operators import add_operator, disable_operator, list_operators

    db = open_db(settings)
    with db.transaction() as s:
        if args.action == "add":
            operator, pin = add_operator(s, args.name)
            name = operator.name
            emit(args, {"name": name, "pin": pin},
                 f"operator {name} added; PIN {pin} (shown once only: give it to {name})")
            return 0
        if args.action == "disable":
            operator = disable_operator(s, args.name)
            emit(args, {"name": operator.name, "active": False},
                 f"operator {operator.name} disabled")
            return 0
        rows = [{"name": o.name, "active": o.active, "created_at": o.created_at,
                 "last_login_at": o.last_login_at} for o in list_operators(s)]
        emit(args, {"operators": rows}, "\n".join(
            f"{r['name']:24} {'active' if r['active'] else 'disabled':8} "
            f"last log-in {r['last_login_at'] or 'never'}" for r in rows) or "no operators")
    return 0


# --------------------------------------------------------------------------- parser


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        with_json(p)
        p.add_argument("--store", type=Path, metavar="DIR",
                       help="prompt store directory (default: the Asterisk instance's)")
        p.add_argument("--catalogue", type=Path, metavar="FILE",
                       help="catalogue file (default: prompts/catalogue.toml)")
        p.set_defaults(func=cmd_prompts)
        return p

    prompts = sub.add_parser("prompts", help="voice prompts: build, import, status, restore")
    actions = prompts.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = common(actions.add_parser("build", help="make speech for prompts that need it"))
    p.add_argument("--engine", choices=["espeak", "gtts"], default="espeak",
                   help="espeak: espeak-ng, offline (default); gtts: Google, needs the network")
    p.add_argument("--lang", type=_langs, help="languages, comma-separated (default: all)")
    p.add_argument("--force", action="store_true",
                   help="remake speech even when up to date (recordings are still kept)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p = common(actions.add_parser(
        "import", help="import studio recordings (WAV, MP3, FLAC, Ogg; any rate)"))
    p.add_argument("directory", type=Path,
                   help="files <id or number>.<ext>, at the top (--lang) or in <lang>/")
    p.add_argument("--lang", help="language of the files at the top (default: the first)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p = common(actions.add_parser("status", help="source and duration of every prompt"))
    p.add_argument("--lang", type=_langs, help="languages, comma-separated (default: all)")
    p = common(actions.add_parser("history", help="the versions of one prompt"))
    p.add_argument("id")
    p.add_argument("--lang", type=_langs)
    p = common(actions.add_parser("restore", help="make an earlier version current again"))
    p.add_argument("id")
    p.add_argument("version", type=int)
    p.add_argument("--lang", help="language (default: the catalogue's first)")

    ops = sub.add_parser("operators", help="who may record prompts on the operator line")
    actions = ops.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, helptext in (("add", "add an operator; prints a new PIN once"),
                           ("disable", "stop an operator from logging in"),
                           ("list", "list operators")):
        p = actions.add_parser(name, help=helptext)
        if name != "list":
            p.add_argument("name")
        with_json(p)
        p.set_defaults(func=cmd_operators)
