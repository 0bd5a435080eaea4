"""CI's check that the tests needing slime's vendored sources ran (`.ci/run`, step 3).

    python .ci/vendored_check.py REPORT.xml

REPORT.xml is the pytest JUnit report of the README's test command, run with $SLIME_VENDOR_DIR
naming ../shared/vendor. A test skipped there because the vendored sources were missing (its
reason names $SLIME_VENDOR_DIR) ran nowhere: CI fails with its name. Exit status 0: none, 1: some
(listed), 2: the report could not be read.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET

VENDOR_REASON = "SLIME_VENDOR_DIR"


def skipped_for_want_of_sources(report: str) -> list[str]:
    """The tests of a JUnit report skipped because slime's vendored sources were missing."""
    out = []
    for case in ET.parse(report).iter("testcase"):
        skip = case.find("skipped")
        if skip is not None and VENDOR_REASON in (skip.get("message") or ""):
            out.append(f"{case.get('classname')}::{case.get('name')}")
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    try:
        lost = skipped_for_want_of_sources(argv[0])
    except (OSError, ET.ParseError) as e:
        print(f"vendored_check: cannot read the report: {e}", file=sys.stderr)
        return 2
    for test in lost:
        print(
            f"vendored_check: {test} was skipped for want of slime's vendored sources: "
            "it ran nowhere (is ../shared/vendor complete?)",
            file=sys.stderr,
        )
    return 1 if lost else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
