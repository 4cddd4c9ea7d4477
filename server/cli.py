"""The `ortserve` command: pull, convert, create, serve, ps, info, list, show, cp, rm.

Each command imports what it needs inside its handler, so `ortserve list` never
pays for torch and `ortserve serve` never loads transformers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ortserve.core.devices import BUILD_DEVICES, DEVICES
from ortserve.core.store import ModelStore, StoreError
from ortserve.server import __version__
from ortserve.server.cli_serve import cmd_serve, configure_logging, open_store


def _store(args: argparse.Namespace) -> ModelStore:
    """The store a store command works on: --models-dir, else $ORTSERVE_MODELS, else <home>/models."""
    from ortserve.core.home import default_configs_dir, default_models_dir

    configure_logging("INFO")  # (says so when it moves old settings files into the store)
    return open_store(args.models_dir or default_models_dir(), default_configs_dir())


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _human(n: float) -> str:
    from ortserve.core.sizes import human_size

    return human_size(n)


def cmd_list(args: argparse.Namespace) -> int:
    store = _store(args)
    for problem in store.problems():
        print(f"warning: skipped {problem}", file=sys.stderr)
    entries = store.entries()
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "name": e.name,
                        "task": e.task,
                        "precision": e.manifest.get("precision"),
                        "device": e.manifest.get("device"),
                        "weights": e.folder.name,
                        "aliases": e.config.aliases,
                        "size": _size(e.folder),
                    }
                    for e in entries
                ],
                indent=2,
            )
        )
        return 0
    rows = [("NAME", "TASK", "PRECISION", "SIZE", "MODIFIED", "ALIASES")]
    for e in entries:
        modified = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.created))
        rows.append(
            (
                e.name,
                e.task,
                e.manifest.get("precision", "?"),
                _human(_size(e.folder)),
                modified,
                ", ".join(e.config.aliases),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    entry = _store(args).get(args.name)
    manifest = {k: v for k, v in entry.manifest.items() if not k.startswith("_")}
    info = {
        "name": entry.name,
        "folder": str(entry.folder),
        "manifest": manifest,
        "settings": entry.config.model_dump(exclude_none=True),
    }
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


def cmd_create(args: argparse.Namespace) -> int:
    """A new name from a Modelfile (Ollama's syntax, see server/modelfile.py): FROM a stored model shares its
    weights with new settings; FROM a folder or hub id converts it under the new name."""
    from ortserve.core.model_config import ModelConfig
    from ortserve.core.store import check_name
    from ortserve.server.modelfile import ModelfileError, parse_modelfile

    path: Path = args.file
    if path.is_dir():  # (Windows would say only "Permission denied")
        raise StoreError(f"{path} is a folder; name the Modelfile itself with -f FILE")
    try:
        modelfile = parse_modelfile(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StoreError(f"{path}: no such file (name the Modelfile with -f FILE)") from None
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise StoreError(f"{path} cannot be used: it is not UTF-8 text (save it as UTF-8)") from None
    except ModelfileError as exc:
        raise StoreError(f"{path} cannot be used:\n  " + str(exc).replace("\n", "\n  ")) from None
    for warning in modelfile.warnings:
        print(f"warning: {path}: {warning}", file=sys.stderr)
    store, name, source = _store(args), check_name(args.name), modelfile.source
    store.check_not_an_alias(name)
    try:
        base = store.get(source)
    except StoreError:
        base = None
    if base is not None:
        weights = base.config.weights or base.name
        try:  # as Ollama, create replaces a name's settings; but it never orphans weights converted under it
            existing = store.get(name)
        except StoreError:
            existing = None
        if existing is not None and existing.name == name and not existing.config.weights and weights != name:
            raise StoreError(f"model '{name}' has weights of its own; remove it first (ortserve rm {name})")
        config = modelfile.to_config(base.config, None if weights == name else weights)
        if name == base.name:  # new settings for the same name: its aliases stay its own
            config = config.model_copy(update={"aliases": base.config.aliases})
        store.write_config(name, config)
        done = "updated the settings of" if existing is not None and existing.name == name else "created"
        print(f"{done} '{name}' from '{base.name}' (shares the weights in {base.folder})")
        return 0
    folder = (path.parent / source).expanduser()
    if folder.is_dir():
        source = str(folder.resolve())
    elif source.count("/") != 1 or Path(source).is_absolute() or source.startswith("."):
        raise StoreError(
            f"{path} line {modelfile.source_line}: FROM {modelfile.source}: not a model in the "
            "store, a local folder or a hub id (owner/name)"
        )
    from ortserve.conversion.cli import convert

    convert(
        source,
        store,
        name=name,
        precision=args.precision,
        device=args.device,
        config=modelfile.to_config(ModelConfig(), None),
    )
    print(f"created '{name}' from {source}")
    return 0


def cmd_ps(args: argparse.Namespace) -> int:
    """The models a running server has loaded (GET /api/ps), as `ollama ps` shows them."""
    from ortserve.core.durations import format_duration
    from ortserve.server.remote import loaded_models, served

    url, key = args.url, args.api_key
    if url is None or key is None:  # the settings `serve` would use, read once
        default_url, default_key = served()
        url, key = url or default_url, key or default_key
    models = loaded_models(url, key)
    if args.json:
        print(json.dumps(models, indent=2))
        return 0
    rows = [("NAME", "TASK", "SIZE", "GPU", "DEVICE", "UNTIL")]  # GPU: its GPU memory estimate (size_vram)
    for m in models:
        left = m.get("expires_in")
        until = "forever" if left is None else f"{format_duration(left)} from now"
        if m.get("requests"):
            until = f"in use; then {format_duration(left) if left is not None else 'forever'}"
        vram = _human(m["size_vram"]) if m.get("size_vram") else "-"
        rows.append(
            (m["name"], str(m.get("task", "?")), _human(m.get("size", 0)), vram, str(m.get("device", "cpu")), until)
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """Packages, runtimes, devices (and what `auto` picks), and a running server's models' devices."""
    from ortserve.server.doctor import main
    from ortserve.server.remote import served

    return main(None if args.no_server else (args.url or served()[0]), as_json=args.json)


def cmd_convert(args: argparse.Namespace) -> int:
    from ortserve.conversion.cli import run

    return run(args, _store(args))


def cmd_pull(args: argparse.Namespace) -> int:
    from ortserve.conversion.pull import run

    return run(args, _store(args))


def build_parser() -> argparse.ArgumentParser:
    from typing import get_args

    from ortserve.conversion.cli import add_arguments
    from ortserve.server.remote import server_url
    from ortserve.server.settings import LogLevel

    parser = argparse.ArgumentParser(prog="ortserve", description="A local OpenAI-compatible server on ONNX Runtime.")
    parser.add_argument("--version", action="version", version=f"ortserve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler, help: str, store: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        if store:  # `ps` and `info` ask a server, not the store
            p.add_argument(
                "--models-dir",
                type=Path,
                help="the model store: weights and their settings files "
                "(default: $ORTSERVE_MODELS, else models/ in ortserve's home)",
            )
        p.set_defaults(handler=handler)
        return p

    from ortserve.conversion.pull import add_arguments as add_pull_arguments

    add_pull_arguments(command("pull", cmd_pull, "download a model that is already ONNX from the Hugging Face hub"))
    add_arguments(command("convert", cmd_convert, "convert a Hugging Face checkpoint into the store"))

    p = command("serve", cmd_serve, "serve the OpenAI API (/v1) for the models in the store")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument("--device", choices=DEVICES, help="execution provider")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (or set ORTSERVE_API_KEY)")
    p.add_argument("--threads", type=int, help="CPU threads per model (default: the physical cores)")
    p.add_argument("--num-parallel", type=int, help="requests generating at once per chat model (default 4)")
    p.add_argument("--prefill-chunk", type=int, help="prompt tokens per scheduler step (default 128)")
    p.add_argument(
        "--batch-decode",
        action=argparse.BooleanOptionalAction,
        help="on a CPU, decode every request's next token in one call (default on)",
    )
    p.add_argument(
        "--prompt-cache-bytes",
        type=int,
        help="KV kept per chat model for prompt reuse across turns (default 1 GiB, at most a quarter of the "
        "runner's memory limit; 0 off)",
    )
    p.add_argument("--log-level", type=str.upper, choices=get_args(LogLevel), help="what serve logs (default INFO)")
    p.add_argument("--no-bootstrap", action="store_true", help="do not set up the default models on an empty store")

    p = command("create", cmd_create, "create a model from a Modelfile (Ollama's syntax: FROM, PARAMETER, SYSTEM)")
    p.add_argument("name")
    p.add_argument("-f", "--file", type=Path, default=Path("Modelfile"), help="the Modelfile (default: ./Modelfile)")
    p.add_argument(
        "--precision",
        choices=("int4", "int8", "fp16", "fp32"),
        help="when FROM is a folder or hub id to convert (default: as `convert`)",
    )
    p.add_argument(
        "--device", choices=BUILD_DEVICES, default="cpu", help="when FROM is converted: the device it is built for"
    )

    p = command("ps", cmd_ps, "list the models a running server has loaded", store=False)
    p.add_argument("--url", type=server_url, help="the server (default: the host and port `serve` would use)")
    p.add_argument("--api-key", help="its API key (default: the api_key `serve` would use)")
    p.add_argument("--json", action="store_true")

    p = command(
        "info", cmd_info, "show the installed runtimes, the devices they offer and what auto picks", store=False
    )
    p.add_argument(
        "--url",
        type=server_url,
        help="a running server to ask for its models' devices (default: the one `serve` would start)",
    )
    p.add_argument("--no-server", action="store_true", help="do not ask a server")
    p.add_argument("--json", action="store_true")

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
    import multiprocessing

    from ortserve.conversion.common import ConversionError
    from ortserve.server.settings import SettingsError

    multiprocessing.freeze_support()  # a frozen bundle's runner and setup processes start here (no-op otherwise)

    for stream in (sys.stdout, sys.stderr):  # a console or pipe that cannot show a character (Windows' cp1252)
        if hasattr(stream, "reconfigure"):  # gets an escape, not a UnicodeEncodeError
            stream.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ConversionError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except SettingsError as exc:  # configs/server.toml, ORTSERVE_* or flags
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the disk said no: a full disk, a folder that cannot be written, a name too long
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
