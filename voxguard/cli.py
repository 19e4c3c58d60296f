"""The ``voxguard`` command.  Subcommands live next to what they drive; each module in
:data:`COMMAND_MODULES` exposes ``register(subparsers, common)``.

Global options (``--store``, ``--embedder``, ``--model``, ``--device``, ``--runtime``, ``--json``,
``-v``) are accepted before or after the subcommand.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .errors import VoxguardError
from .paths import default_store

COMMAND_MODULES = [
    "voxguard.enroll.commands",
    "voxguard.enroll.datasets",
    "voxguard.models",
    "voxguard.enroll.calibrate_commands",
    "voxguard.enroll.clone_commands",
    "voxguard.daemon.commands",
    "voxguard.clients.commands",
]


@dataclass
class Context:
    """What every command handler gets: parsed options and lazily built resources."""

    args: argparse.Namespace
    _embedder: object = field(default=None, repr=False)

    @property
    def json(self) -> bool:
        return bool(getattr(self.args, "json", False))

    @property
    def store_location(self):
        """``--store``, else ``$VOXGUARD_STORE``, else the user data dir's file, as a
        :class:`~voxguard.store.StoreLocation` (an unsupported URL scheme raises StoreError)."""
        from .store import parse_store_location

        return parse_store_location(getattr(self.args, "store", None) or default_store())

    @property
    def store_path(self):
        """The old name of :attr:`store_location` (``exists()`` and ``str()`` work the same)."""
        return self.store_location

    def open_store(self, create: bool = False, readonly: bool = False):
        return self.store_location.open(create=create, readonly=readonly)

    def embedder_name(self, store=None) -> str:
        from .embedders import DEFAULT_EMBEDDER

        name = getattr(self.args, "embedder", None)
        if name:
            return name
        if store is not None and store.embedder is not None:
            return store.embedder.name
        return DEFAULT_EMBEDDER

    def embedder(self, store=None):
        """The embedder asked for (or the store's own), checked against the store."""
        if self._embedder is None:
            from .embedders import create_embedder

            self._embedder = create_embedder(self.embedder_name(store), device=self.args.device,
                                             model=getattr(self.args, "model", None),
                                             runtime=getattr(self.args, "runtime", None))
        if store is not None:
            store.check_embedder(self._embedder.identity)
        return self._embedder

    def emit(self, data, text: str | None = None) -> None:
        """Print ``data`` as JSON with --json, else ``text`` (or a plain rendering)."""
        if self.json:
            print(json.dumps(data, indent=2, default=_json_default))
        elif text is not None:
            print(text)
        else:
            print(data)


def _json_default(o):
    import numpy as np

    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def common_options() -> argparse.ArgumentParser:
    """Options every subcommand accepts (``SUPPRESS`` so a later one never erases an earlier one)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("global options")
    g.add_argument("--store", metavar="PATH|URL", default=argparse.SUPPRESS,
                   help="speaker store: an SQLite file, or postgresql://USER@HOST/DB; default "
                        "$VOXGUARD_STORE or the user data dir")
    g.add_argument("--embedder", choices=["resemblyzer", "titanet"], default=argparse.SUPPRESS,
                   help="embedding model (default: the store's own, else resemblyzer)")
    g.add_argument("--model", metavar="NEMO", default=argparse.SUPPRESS,
                   help="TitaNet .nemo file or pretrained name (titanet only; or $VOXGUARD_TITANET_MODEL)")
    g.add_argument("--device", default=argparse.SUPPRESS, help="auto (default), cpu or cuda[:N]")
    g.add_argument("--runtime", choices=["auto", "torch", "onnx", "onnx-int8"], default=argparse.SUPPRESS,
                   help="what runs the resemblyzer encoder: onnx (ONNX Runtime on the CPU: same embeddings, "
                        "faster with several threads), onnx-int8 (faster again; mean cosine 0.9996 to those), "
                        "torch, or auto (default: onnx on CPU when onnxruntime is installed; or "
                        "$VOXGUARD_EMBEDDER_RUNTIME)")
    g.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    g.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more logging")
    return p


def build_parser() -> argparse.ArgumentParser:
    common = common_options()
    parser = argparse.ArgumentParser(
        prog="voxguard", parents=[common],
        description="Real-time speaker verification and voice-clone detection.")
    parser.add_argument("--version", action="version", version=f"voxguard {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for opt, default in (("store", None), ("embedder", None), ("model", None), ("device", "auto"), ("runtime", None),
                         ("json", False), ("verbose", 0)):
        if not hasattr(args, opt):
            setattr(args, opt, default)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TQDM_DISABLE", "1" if not sys.stderr.isatty() else "0")
    ctx = Context(args)
    try:
        return int(args.func(ctx) or 0)
    except VoxguardError as e:
        if ctx.json:
            print(json.dumps({"error": e.kind or type(e).__name__, "message": e.message}), file=sys.stderr)
        else:
            print(f"voxguard: error: {e.message}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("voxguard: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 141


if __name__ == "__main__":
    sys.exit(main())
