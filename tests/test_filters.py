"""bridge.filters without slime: the keep/drop decision, chaining, and the outage stop.
(With slime's real rollout loop: tests/test_slime_control_flow.py.)"""

from __future__ import annotations

import types

import pytest

import bridge.filters as filters
from bridge.sample import FallbackSample


def group(*failed: bool) -> list[FallbackSample]:
    return [FallbackSample(metadata={"infra_failure": f}, reward=1.0) for f in failed]


def reject_all(args, samples, **kwargs):
    return False


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.setattr(filters, "_consecutive", [0])
    monkeypatch.delenv(filters.NEXT_FILTER_ENV, raising=False)


def test_a_group_with_an_infra_failure_is_dropped_and_others_kept() -> None:
    args = types.SimpleNamespace()
    assert filters.drop_infra_failures(args, group(False, False)) is True
    assert filters.drop_infra_failures(args, group(False, True)) is False
    assert filters.drop_infra_failures(args, [group(True), group(False)]) is False  # nested


def test_kept_groups_go_through_the_next_filter(monkeypatch) -> None:
    monkeypatch.setenv(filters.NEXT_FILTER_ENV, f"{__name__}.reject_all")
    assert filters.drop_infra_failures(None, group(False, False)) is False


def test_a_lasting_outage_stops_the_rollout(monkeypatch) -> None:
    monkeypatch.setattr(filters, "MAX_CONSECUTIVE_DROPS", 3)
    bad = group(True)
    bad[0].metadata["failure_message"] = "env server unreachable"
    assert filters.drop_infra_failures(None, bad) is False
    assert filters.drop_infra_failures(None, group(False)) is True  # a success resets the count
    filters.drop_infra_failures(None, bad)
    filters.drop_infra_failures(None, bad)
    with pytest.raises(filters.InfraOutageError, match="env server unreachable"):
        filters.drop_infra_failures(None, bad)
