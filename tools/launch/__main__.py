"""`python -m tools.launch` (run.sh): plan, print or carry out a slime training launch."""

from tools.launch.launcher import main

if __name__ == "__main__":
    raise SystemExit(main())
