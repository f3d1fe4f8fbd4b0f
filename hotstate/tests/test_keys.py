"""The key schema: one tag per entity, a versioned prefix, ids escaped so keys never collide."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from hotstate import keys

TAG = re.compile(r"\{([^}]*)\}")


def tag_of(key: str) -> str:
    match = TAG.search(key)
    assert match, key
    return match.group(1)


def test_every_node_key_carries_the_node_tag() -> None:
    node_keys = [
        keys.node_presence("n1"),
        keys.node_caps("n1"),
        keys.node_reservations("n1"),
        keys.node_unavailable("n1"),
        keys.node_mna_rate("n1"),
        keys.node_mna_dropped("n1"),
    ]
    assert {tag_of(key) for key in node_keys} == {"n:n1"}
    assert len(set(node_keys)) == len(node_keys)


def test_each_entity_has_its_own_tag() -> None:
    assert tag_of(keys.job_record("j1")) == tag_of(keys.job_subscribers("j1")) == "j:j1"
    assert tag_of(keys.request_binding("acme", "r1")) == "r:acme:r1"
    assert tag_of(keys.session_owner("s1")) == "s:s1"
    assert tag_of(keys.instance_presence("i1")) == "i:i1"
    assert tag_of(keys.leader_lock("stats")) == "l:stats"
    assert tag_of(keys.mna_debounce("asr", "v2")) == "m:asr@v2"
    assert tag_of(keys.mna_debounce("asr", None)) == "m:asr"


def test_keys_start_with_the_versioned_prefix(settings) -> None:
    settings.HOTSTATE_PREFIX = "gs9"
    assert keys.job_record("j1") == "gs9:{j:j1}:record"


def test_a_prefix_with_braces_is_refused(settings) -> None:
    settings.HOTSTATE_PREFIX = "gs{1}"
    with pytest.raises(ImproperlyConfigured, match="braces"):
        keys.job_record("j1")


def test_ids_cannot_end_a_tag_early_or_collide_across_tenants() -> None:
    # Without escaping, tenant "a:b" + request "c" and tenant "a" + request "b:c" are one key.
    assert keys.request_binding("a:b", "c") != keys.request_binding("a", "b:c")
    assert keys.mna_debounce("a@b", None) != keys.mna_debounce("a", "b")
    sneaky = keys.job_record("x}y{z")
    assert tag_of(sneaky) == "j:x%7Dy%7Bz"


def test_an_empty_id_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        keys.node_caps("")


def test_directories_are_sharded_and_a_node_always_lands_in_the_same_shard() -> None:
    directories = keys.node_directories()
    assert len(set(directories)) == keys.NODE_DIRECTORY_SHARDS > 1
    assert len({tag_of(d) for d in directories}) == keys.NODE_DIRECTORY_SHARDS
    shards = {keys.node_directory_shard(f"node-{i}") for i in range(200)}
    assert shards == set(range(keys.NODE_DIRECTORY_SHARDS))
    assert keys.node_directory_of("n7") == keys.node_directory_of("n7")
    streams = {keys.mna_stream(shard) for shard in range(keys.MNA_STREAM_SHARDS)}
    assert len(streams) == keys.MNA_STREAM_SHARDS > 1


# A key literal has a tag after the prefix (":{n:") or a kind after the tag ("}:caps").
KEY_SHAPE = re.compile(r":\{[a-z]:|\}:[a-z_]+\b")


def _python_literals(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


def _lua_literals(path: Path) -> list[tuple[int, str]]:
    found = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        code = line.split("--", 1)[0]
        found += [
            (number, text)
            for text in re.findall(r"'([^']*)'|\"([^\"]*)\"", code)
            for text in text
            if text
        ]
    return found


def test_no_key_literal_outside_keys_py() -> None:
    """No string literal shaped like a key (``{n:``, ``:presence`` ...) outside keys.py."""
    root = Path(keys.__file__).parent
    offenders = []
    # Production code only: tests build odd ids on purpose.
    for path in root.glob("*.py"):
        if path.name != "keys.py":
            offenders += [
                f"{path.name}:{n}: {text!r}"
                for n, text in _python_literals(path)
                if KEY_SHAPE.search(text)
            ]
    for path in root.glob("lua/*.lua"):
        offenders += [
            f"{path.name}:{n}: {text!r}"
            for n, text in _lua_literals(path)
            if KEY_SHAPE.search(text)
        ]
    assert offenders == []


def test_the_literal_scan_would_see_a_key_literal(tmp_path: Path) -> None:
    """The scan above can fail: it finds key-shaped literals in code, not in docstrings."""
    sample = tmp_path / "sample.py"
    sample.write_text('"""Docs may mention {n:ID}."""\nKEY = "gs1:{n:abc}:caps"\n')
    assert [text for _, text in _python_literals(sample) if KEY_SHAPE.search(text)] == [
        "gs1:{n:abc}:caps"
    ]
    lua = tmp_path / "x-1.lua"
    lua.write_text("-- KEYS[1] caps  {n:ID}\nredis.call('GET', 'gs1:{n:abc}:caps')\n")
    assert [text for _, text in _lua_literals(lua) if KEY_SHAPE.search(text)] == [
        "gs1:{n:abc}:caps"
    ]
