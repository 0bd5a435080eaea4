"""`python -m envs <command>`: tools for the environments. Commands: play, replay."""

from __future__ import annotations

import argparse
import sys

from envs import play, replay


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m envs", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    play.add_arguments(commands.add_parser("play", help="play one episode by hand in the terminal"))
    replay.add_arguments(
        commands.add_parser(
            "replay",
            help="re-execute a stored episode's tool calls and diff outputs and rewards",
            description=(replay.__doc__ or "").split("\n\n", 1)[1],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )
    args = parser.parse_args(argv)
    if args.command == "play":
        return play.main(args)
    if args.command == "replay":
        return replay.main(args)
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
