"""`ortserve serve`, and the set-up every command shares: our log lines on stderr, the store opened (with an
older layout's settings moved into it). server/cli.py parses the command line and dispatches here."""

from __future__ import annotations

import argparse
import errno
import logging
import socket
import sys
from pathlib import Path

from ortserve.core.devices import Environment
from ortserve.core.store import ModelStore


def open_store(models_dir: Path, configs_dir: Path) -> ModelStore:
    """The store at `models_dir`, checked, with the per-model settings of an older layout of the same home moved
    into it (see `migrate_settings`)."""
    from ortserve.core.home import migrate_settings

    store = ModelStore(models_dir)
    store.check_folders()
    migrate_settings(store.models_dir, configs_dir)
    return store


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    from ortserve.server.app import serve
    from ortserve.server.settings import ServerSettings

    flags: tuple[str, ...] = ("host", "port", "device", "api_key", "models_dir", "threads", "num_parallel")
    flags += ("prefill_chunk", "batch_decode")
    flags += ("prompt_cache_bytes", "log_level")
    overrides = {name: getattr(args, name) for name in flags}
    if args.no_bootstrap:
        overrides["bootstrap"] = False
    settings = ServerSettings.load(**overrides)
    configure_logging(settings.log_level)
    from ortserve.server.doctor import runtimes_installed

    if not runtimes_installed():
        return 2
    if not device_usable(settings.device):
        return 2
    store = open_store(settings.models_dir, settings.configs_dir)
    if not _can_listen(settings.host, settings.port):  # before a bootstrap that may take minutes
        return 2
    store.clean_staging()
    if settings.bootstrap and not store.entries():
        from ortserve.server.bootstrap import bootstrap_in_child

        bootstrap_in_child(store)  # torch and transformers stay out of the serving process
    try:
        asyncio.run(serve(settings, store))
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:  # taken since `_can_listen` looked
            raise
        return _cannot_listen(settings.host, settings.port, exc)
    return 0


def _can_listen(host: str, port: int) -> bool:
    """Whether the server can bind HOST:PORT (as Hypercorn binds it); if not, say why."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        if sys.platform != "win32":  # Windows' SO_REUSEADDR would let two servers share the port
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as exc:  # in use, not this machine's address, a privileged port, an unknown host name
            _cannot_listen(host, port, exc)
            return False
    return True


def _cannot_listen(host: str, port: int, exc: OSError) -> int:
    why = exc.strerror or str(exc)
    hint = " (another server is running there? choose another with --port)" if exc.errno == errno.EADDRINUSE else ""
    print(f"error: cannot listen on {host}:{port}: {why}{hint}", file=sys.stderr)
    return 2


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record is emitted (as logging's last resort does)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure_logging(level: str) -> None:
    """Our loggers (model loads, unloads, warnings) to stderr from `level` up (`serve`: the log_level setting);
    the handler is added once."""
    for name in ("ortserve",):  # not the root: Hypercorn has its own handlers
        logger = logging.getLogger(name)
        logger.setLevel(level)
        if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
            handler = _StderrHandler()
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
            logger.addHandler(handler)


def device_usable(device: str, env: Environment | None = None) -> bool:
    """A device named for the whole server: refuse to start when it runs nothing here, warn when it runs only
    one kind of model (CoreML: embeddings only). The per-model check at load says the same per request. For
    "auto", warn when an accelerator is half set up (a CUDA build without a driver). With a CUDA build the machine
    check loads CUDA in a child process, here, once, before the server serves."""
    from ortserve.core.devices import detect, missed_accelerator, unavailable

    env = env or detect()
    if device == "auto":
        missed = missed_accelerator(env, "generation") or missed_accelerator(env, "embeddings")
        if missed:
            print(f"warning: device auto: models run on the CPU here; {missed}", file=sys.stderr)
        return True
    problems = {runtime: unavailable(device, env, runtime) for runtime in ("generation", "embeddings")}
    if all(problems.values()):
        print(f"error: device '{device}' cannot run models here: {problems['generation']}", file=sys.stderr)
        return False
    for runtime, why in problems.items():
        if why:
            print(
                f"warning: device '{device}' cannot run {runtime} here ({why}); such models answer 501", file=sys.stderr
            )
    return True
