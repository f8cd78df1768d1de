"""The `csad` command line.

Each subcommand lives in the module that implements it; that module defines
`configure_parser(parser)` and `run(args) -> int`. Modules are imported only
when their subcommand runs, so `csad --help` stays fast and torch is imported
only by the commands that need it.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from csad_jax.errors import CSADError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": (
        "csad_jax.data.synthetic",
        "generate a synthetic MVTec LOCO-layout dataset",
    ),
    "info": ("csad_jax.data.info", "summarise a LOCO-layout folder and list problems"),
    "labels": ("label_gen.cli", "generate semantic pseudo-labels for one category"),
    "fit": ("csad_jax.pipeline", "fit a CSAD model of one category (resumable)"),
    "eval": ("csad_jax.evaluate", "score the test split of a fitted run"),
    "predict": ("csad_jax.predict", "score images with a run or exported artifact"),
    "export": ("csad_jax.export", "export the fused inference with jax.export"),
    "demo": ("csad_jax.demo", "synthetic data, fit and eval with the fast preset"),
    "import-official": (
        "csad_jax.official_import",
        "convert an official CSAD fused export into a run for csad eval",
    ),
    "bench": ("csad_jax.bench", "time the fused inference (JAX vs PyTorch)"),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: lists the subcommands (their options load lazily)."""
    parser = argparse.ArgumentParser(
        prog="csad",
        description="CSAD logical/structural anomaly detection in JAX.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `csad COMMAND ...`; user errors print one line and return 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        build_parser().parse_args(argv)  # prints usage or help, then exits
        return 2
    command = argv[0]
    module_name, help_text = COMMANDS[command]
    parser = argparse.ArgumentParser(prog=f"csad {command}", description=help_text)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] in ("csad_jax", "label_gen"):
            raise
        print(
            f"csad {command}: error: needs the package {err.name!r}; "
            "install the project's extras (pip install -e '.[labels]')",
            file=sys.stderr,
        )
        return 2
    module.configure_parser(parser)
    args = parser.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except CSADError as err:
        print(f"csad {command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"csad {command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
