"""The `mlpbench` command: one subcommand per job, each in mlp/commands/.

Bad input of any kind ends the command with one line on stderr that names the argument and
what is allowed, and exit status 2; nothing is written before the input has been checked.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Each module in mlp.commands defines register(subparsers), which adds its parser and sets
# `run` (a function of the parsed args returning an exit status) as its default.
COMMANDS = ("measure", "estimate", "fit", "gpus", "probe", "sweep", "report", "advise")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but an error is one line (no usage block) and exits with status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="mlpbench",
        description="How fast an MLP runs, how much memory it needs, and where it stops fitting.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log each stage")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND",
                                       parser_class=OneLineParser)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"mlp.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"mlp.commands.{name}":
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.run(args)
    except ValueError as exc:
        print(f"mlpbench {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mlpbench {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`mlpbench gpus | head`): not an error of ours. Point stdout
        # at devnull so that Python's own flush at exit does not complain again.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
