"""`python -m envs <command>`: tools for the environments.

Commands: play (one episode by hand), new (write a minimal environment of one's own), check (the
conformance check of an environment through the server), and replay (an alias).

`python -m envs replay` is the old path of `python -m tools.replay`, kept for one release: it runs
that module by name, so this package never imports the tools.
"""

from __future__ import annotations

import argparse
import runpy
import sys

from envs import play


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["replay"]:
        sys.argv = ["python -m tools.replay", *argv[1:]]
        runpy.run_module("tools.replay", run_name="__main__", alter_sys=True)
        return 0
    from envs import scaffold
    from envs.check import runner

    parser = argparse.ArgumentParser(prog="python -m envs", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    play.add_arguments(commands.add_parser("play", help="play one episode by hand in the terminal"))
    scaffold.add_arguments(
        commands.add_parser("new", help="write a minimal environment of your own (NAME/)")
    )
    runner.add_arguments(
        commands.add_parser(
            "check",
            help="check that environments are deterministic, bounded and safe to serve",
            description=runner.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )
    commands.add_parser("replay", help="alias of python -m tools.replay (one release)")
    args = parser.parse_args(argv)
    if args.command == "play":
        return play.main(args)
    if args.command == "new":
        return scaffold.main(args)
    if args.command == "check":
        return runner.main(args)
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
