"""`python prepare_tasks.py --config train_config.yaml`: the environments as slime's prompt JSONL.

The entry point users know; the work is `tools.prepare_tasks` (`--help` lists the options).
"""

from __future__ import annotations

import sys

from tools.prepare_tasks import main

if __name__ == "__main__":
    sys.exit(main())
