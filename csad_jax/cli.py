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
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="csad",
        description="CSAD logical/structural anomaly detection in JAX.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        sub_parser.set_defaults(_module=module_name)
        # Parsers are configured lazily only for the chosen command (see main).
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    known, _ = parser.parse_known_args(argv) if argv else (None, None)
    if known is None or not getattr(known, "command", None):
        parser.parse_args(argv)  # prints usage / help and exits
        return 2
    module = importlib.import_module(known._module)
    full = argparse.ArgumentParser(
        prog=f"csad {known.command}", description=COMMANDS[known.command][1]
    )
    module.configure_parser(full)
    args = full.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except CSADError as err:
        print(f"csad {known.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"csad {known.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
