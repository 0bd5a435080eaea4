"""CI's check that no vendored test is lost between its two test runs (`.ci/run`, step 4).

    python .ci/vendored_check.py VENDORED.xml FRESH.xml

Both are pytest JUnit reports: VENDORED.xml of `pytest -m vendored` with ../shared, FRESH.xml of
the README's test command in a fresh clone. Every test FRESH.xml skipped because slime's vendored
sources were missing (its reason names $SLIME_VENDOR_DIR) must have passed in VENDORED.xml; a
test that needs them but lacks the `vendored` marker would otherwise run nowhere. Exit status 0:
none missing, 1: some (listed), 2: a report could not be read.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator

VENDOR_REASON = "SLIME_VENDOR_DIR"


def cases(path: str) -> Iterator[tuple[str, ET.Element]]:
    """(test id, <testcase>) of every test in a JUnit report."""
    for case in ET.parse(path).iter("testcase"):
        yield f"{case.get('classname')}::{case.get('name')}", case


def outcome(case: ET.Element) -> str:
    for kind in ("failure", "error", "skipped"):
        if case.find(kind) is not None:
            return kind
    return "passed"


def missed(vendored: str, fresh: str) -> list[str]:
    """Tests skipped in `fresh` for want of the vendored sources that did not pass in `vendored`."""
    passed = {test for test, case in cases(vendored) if outcome(case) == "passed"}
    out = []
    for test, case in cases(fresh):
        skip = case.find("skipped")
        if skip is not None and VENDOR_REASON in (skip.get("message") or "") and test not in passed:
            out.append(test)
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    try:
        lost = missed(*argv)
    except (OSError, ET.ParseError) as e:
        print(f"vendored_check: cannot read a report: {e}", file=sys.stderr)
        return 2
    for test in lost:
        print(
            f"vendored_check: {test} skipped without the vendored sources and did not pass in "
            "`pytest -m vendored` (mark it @pytest.mark.vendored)",
            file=sys.stderr,
        )
    return 1 if lost else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
