"""`python -m bridge.launch` (run.sh): plan, print or carry out a slime training launch."""

from bridge.launch.launcher import main

if __name__ == "__main__":
    raise SystemExit(main())
