"""The `ortserve` command: convert, serve, list, show, cp, rm.

Each command imports what it needs inside its handler, so `ortserve list` never
pays for torch and `ortserve serve` never loads transformers.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from server.store import ModelStore, StoreError


def _store(args: argparse.Namespace) -> ModelStore:
    from server.settings import default_configs_dir, default_models_dir

    return ModelStore(args.models_dir or default_models_dir(), default_configs_dir())


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def cmd_list(args: argparse.Namespace) -> int:
    store = _store(args)
    for problem in store.problems():
        print(f"warning: skipped {problem}", file=sys.stderr)
    entries = store.entries()
    if args.json:
        print(json.dumps([{"name": e.name, "task": e.task, "precision": e.manifest.get("precision"),
                           "device": e.manifest.get("device"), "weights": e.folder.name,
                           "aliases": e.config.aliases, "size": _size(e.folder)} for e in entries], indent=2))
        return 0
    rows = [("NAME", "TASK", "PRECISION", "SIZE", "MODIFIED", "ALIASES")]
    for e in entries:
        modified = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.created))
        rows.append((e.name, e.task, e.manifest.get("precision", "?"), _human(_size(e.folder)), modified,
                     ", ".join(e.config.aliases)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    entry = _store(args).get(args.name)
    manifest = {k: v for k, v in entry.manifest.items() if not k.startswith("_")}
    info = {"name": entry.name, "folder": str(entry.folder), "manifest": manifest,
            "settings": entry.config.model_dump(exclude_none=True)}
    print(json.dumps(info, indent=2, ensure_ascii=False))
    return 0


def cmd_cp(args: argparse.Namespace) -> int:
    entry = _store(args).copy(args.source, args.destination)
    print(f"copied '{args.source}' to '{entry.name}' (shares the weights in {entry.folder})")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    store = _store(args)
    for name in args.names:
        store.remove(name)
        print(f"deleted '{name}'")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from conversion.cli import run

    return run(args, _store(args))


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    from server.app import serve
    from server.settings import ServerSettings

    overrides = {"host": args.host, "port": args.port, "device": args.device, "api_key": args.api_key,
                 "models_dir": args.models_dir}
    if args.no_bootstrap:
        overrides["bootstrap"] = False
    settings = ServerSettings.load(**overrides)
    store = ModelStore(settings.models_dir, settings.configs_dir)
    store.clean_staging()
    if settings.bootstrap and not store.entries():
        from server.bootstrap import bootstrap

        bootstrap(store)
    asyncio.run(serve(settings, store))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from conversion.cli import add_arguments

    parser = argparse.ArgumentParser(prog="ortserve", description="A local OpenAI-compatible server on ONNX Runtime.")
    parser.add_argument("--version", action="version", version=f"ortserve {__import__('server').__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--models-dir", type=Path, help="the model store (default: $ORTSERVE_MODELS or models/)")
        p.set_defaults(handler=handler)
        return p

    add_arguments(command("convert", cmd_convert, "convert a Hugging Face checkpoint into the store"))

    p = command("serve", cmd_serve, "serve the OpenAI API (/v1) for the models in the store")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "dml", "coreml"), help="execution provider")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (or set ORTSERVE_API_KEY)")
    p.add_argument("--no-bootstrap", action="store_true", help="do not set up the default models on an empty store")

    p = command("list", cmd_list, "list the models in the store")
    p.add_argument("--json", action="store_true")
    p = command("show", cmd_show, "show a model's manifest and settings")
    p.add_argument("name")
    p = command("cp", cmd_cp, "add a name for a model (shares its weights, like `ollama cp`)")
    p.add_argument("source")
    p.add_argument("destination")
    p = command("rm", cmd_rm, "remove models from the store")
    p.add_argument("names", nargs="+")
    return parser


def main(argv: list[str] | None = None) -> int:
    from conversion.common import ConversionError

    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ConversionError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
