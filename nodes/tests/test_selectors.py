"""Selection from the node snapshot (DESIGN.md, the scheduling path, step 2)."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest

from hotstate.directory import NodeView
from hotstate.nodes import NodeCaps, NodeLoad
from nodes.selectors import node_candidates
from nodes.snapshot import NodeSnapshot


def now_ms() -> int:
    return int(time.time() * 1000)


def view(
    node_id: str,
    *,
    services: dict[str, list[str]] | None = None,
    features: tuple[str, ...] = (),
    max_jobs: int = 4,
    live: int = 0,
    drained: bool = False,
    load: NodeLoad | None = None,
    unavailable: dict[str, int] | None = None,
) -> NodeView:
    return NodeView(
        node_id=node_id,
        channel=f"chan-{node_id}",
        caps=NodeCaps(
            max_jobs=max_jobs,
            node_version="1",
            services=services if services is not None else {"asr": ["v1", "v2"]},
            features=features,
        ),
        load=load or NodeLoad(cpu_pct=10, mem_pct=10, gpu_pct=10),
        drained=drained,
        live=live,
        unavailable=unavailable or {},
    )


def snapshot_of(*views: NodeView) -> NodeSnapshot:
    return NodeSnapshot(nodes={v.node_id: v for v in views})


def pick(snapshot: NodeSnapshot, **query: Any) -> list[str]:
    query = {"service_id": "asr", "service_version": None, "features": (), **query}
    return [node.node_id for node in node_candidates(snapshot=snapshot, **query)]


# --- filters --------------------------------------------------------------------------------------


def test_only_nodes_offering_the_service_are_candidates() -> None:
    snapshot = snapshot_of(view("asr"), view("tts", services={"tts": []}))
    assert pick(snapshot) == ["asr"]
    assert pick(snapshot, service_id="tts") == ["tts"]
    assert pick(snapshot, service_id="nmt") == []
    assert snapshot.exclusions == Counter({"service": 4})


def test_a_version_must_be_offered_and_no_version_takes_any() -> None:
    snapshot = snapshot_of(
        view("v1", services={"asr": ["v1"]}),
        view("v2", services={"asr": ["v2"]}),
        view("unversioned", services={"asr": []}),
    )
    assert pick(snapshot, service_version="v2") == ["v2"]
    assert sorted(pick(snapshot)) == ["unversioned", "v1", "v2"]
    assert snapshot.exclusions["version"] == 2


def test_every_requested_feature_is_required() -> None:
    snapshot = snapshot_of(
        view("both", features=("gpu", "diarization")),
        view("gpu", features=("gpu",)),
        view("none"),
    )
    assert pick(snapshot, features=["gpu", "diarization"]) == ["both"]
    assert sorted(pick(snapshot, features=["gpu"])) == ["both", "gpu"]
    assert snapshot.exclusions["features"] == 3


def test_drained_nodes_are_excluded() -> None:
    snapshot = snapshot_of(view("drained", drained=True), view("open"))
    assert pick(snapshot) == ["open"]
    assert snapshot.exclusions["drained"] == 1


def test_unavailable_marks_exclude_until_they_expire() -> None:
    now = now_ms()
    snapshot = snapshot_of(
        view("marked", unavailable={"asr": now + 60_000}),
        view("expired", unavailable={"asr": now - 1}),
        view("other-service", unavailable={"tts": now + 60_000}),
        view("v2-only", unavailable={"asr@v2": now + 60_000}),
    )
    assert sorted(pick(snapshot)) == ["expired", "other-service", "v2-only"]
    assert sorted(pick(snapshot, service_version="v1")) == ["expired", "other-service", "v2-only"]
    assert sorted(pick(snapshot, service_version="v2")) == ["expired", "other-service"]
    assert snapshot.exclusions["unavailable"] == 4


@pytest.mark.parametrize(
    ("load", "excluded"),
    [
        (NodeLoad(cpu_pct=80, mem_pct=10, gpu_pct=10), False),
        (NodeLoad(cpu_pct=81, mem_pct=10, gpu_pct=10), True),
        (NodeLoad(cpu_pct=10, mem_pct=71, gpu_pct=10), True),
        (NodeLoad(cpu_pct=10, mem_pct=10, gpu_pct=91), True),
        (NodeLoad(cpu_pct=10, mem_pct=10, gpu_pct=None), False),
    ],
)
def test_nodes_over_a_resource_threshold_are_excluded(
    settings, load: NodeLoad, excluded: bool
) -> None:
    settings.SELECT_MAX_CPU_PCT = 80
    settings.SELECT_MAX_MEM_PCT = 70
    settings.SELECT_MAX_GPU_PCT = 90
    snapshot = snapshot_of(view("n", load=load))
    assert pick(snapshot) == ([] if excluded else ["n"])
    assert snapshot.exclusions["resources"] == int(excluded)


def test_nodes_the_caller_excludes_are_skipped_and_counted() -> None:
    snapshot = snapshot_of(view("a"), view("b"))
    assert pick(snapshot, exclude=["a"]) == ["b"]
    assert snapshot.exclusions["excluded"] == 1


# --- ranking --------------------------------------------------------------------------------------


def test_candidates_rank_least_loaded_first_by_share_of_max_jobs() -> None:
    snapshot = snapshot_of(
        view("half", max_jobs=4, live=2),
        view("idle", max_jobs=1, live=0),
        view("quarter", max_jobs=8, live=2),
        view("most", max_jobs=4, live=3),
    )
    assert pick(snapshot) == ["idle", "quarter", "half", "most"]


def test_nodes_that_look_full_rank_last_but_stay_candidates() -> None:
    # The snapshot may be a second old; the reserve script decides whether a slot is free.
    snapshot = snapshot_of(view("full", max_jobs=2, live=2), view("busy", max_jobs=4, live=3))
    assert pick(snapshot) == ["busy", "full"]
    assert snapshot.exclusions == Counter()


def test_ties_are_broken_at_random() -> None:
    snapshot = snapshot_of(*(view(f"n{i}", live=1) for i in range(4)))
    firsts = {pick(snapshot)[0] for _ in range(200)}
    assert firsts == {"n0", "n1", "n2", "n3"}
