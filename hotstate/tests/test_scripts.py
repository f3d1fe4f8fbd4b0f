"""The loader: every .lua has a complete header, and broken ones are refused at load."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from redis.asyncio.cluster import RedisCluster

from hotstate import codes, keys
from hotstate.codes import Code, ScriptReplyError
from hotstate.scripts import LUA_DIR, SCRIPTS, ScriptHeaderError, ScriptRegistry, parse_script

LUA_FILES = sorted(LUA_DIR.glob("*.lua"))


def test_every_lua_file_is_loaded_once() -> None:
    assert len(LUA_FILES) == len(SCRIPTS.scripts) > 20
    assert {script.filename for script in SCRIPTS.scripts.values()} == {
        path.name for path in LUA_FILES
    }


@pytest.mark.parametrize("path", LUA_FILES, ids=lambda path: path.name)
def test_header_lists_every_key_argument_and_code(path: Path) -> None:
    script = parse_script(path)
    numkeys = int(re.fullmatch(r"[a-z_]+-(\d+)\.lua", path.name).group(1))  # type: ignore[union-attr]
    assert script.numkeys == len(script.keys) == numkeys
    header = path.read_text()
    for index in range(1, numkeys + 1):
        assert f"-- KEYS[{index}] " in header
    for index in range(1, len(script.argv) + 1):
        assert re.search(rf"-- ARGV\[{index}(\.\.)?\] ", header)
    assert script.codes and script.codes <= set(Code)


def test_each_script_runs_from_the_wrapper_of_its_name() -> None:
    """One grep finds a script and its wrapper: ``lua/<name>-N.lua`` runs from ``def <name>``."""
    callers: dict[str, set[str]] = {}
    for path in sorted(LUA_DIR.parent.glob("*.py")):
        for function in ast.walk(ast.parse(path.read_text())):
            if not isinstance(function, ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                if (
                    isinstance(node, ast.Call)
                    and ast.unparse(node.func) == "SCRIPTS.call"
                    and node.args
                    and isinstance(node.args[0], ast.Constant)
                ):
                    callers.setdefault(node.args[0].value, set()).add(function.name)
    assert callers == {name: {name} for name in SCRIPTS.scripts}


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


GOOD = """-- thing_touch: a fine script.
-- KEYS[1] thing  a key
-- ARGV[1] value
-- RETURN {OK, value}  done
redis.call('SET', KEYS[1], ARGV[1])
return {'OK', ARGV[1]}
"""


def test_a_well_formed_script_parses(tmp_path: Path) -> None:
    script = parse_script(write(tmp_path, "thing_touch-1.lua", GOOD))
    assert (script.keys, script.argv, script.codes) == (("thing",), ("value",), {"OK"})


@pytest.mark.parametrize(
    ("name", "text", "complaint"),
    [
        ("thingtouch-1.lua", GOOD, "file name"),
        ("thing_touch-2.lua", GOOD, "lists 1 KEYS but the file name says 2"),
        ("thing_touch-1.lua", GOOD.replace("-- thing_touch:", "-- thing_other:"), "must start"),
        ("thing_touch-1.lua", GOOD.replace("-- RETURN {OK, value}  done\n", ""), "no RETURN"),
        ("thing_touch-1.lua", GOOD.replace("{'OK'", "{'FULL'"), "the body returns"),
        ("thing_touch-1.lua", GOOD.replace("ARGV[1])", "ARGV[2])"), "beyond the declared"),
        (
            "thing_touch-1.lua",
            GOOD.replace("KEYS[1], ARGV[1])", "'gs1:x' .. ARGV[1], KEYS[1])"),
            "a key must be KEYS[i]",
        ),
        ("thing_touch-1.lua", GOOD.replace("KEYS[1], ARGV", "KEYS[2], ARGV"), "uses KEYS"),
        ("thing_touch-1.lua", GOOD.replace("{OK, value}", "{NOPE, value}"), "not in hotstate"),
    ],
)
def test_a_broken_script_is_refused_at_load(
    tmp_path: Path, name: str, text: str, complaint: str
) -> None:
    with pytest.raises(ScriptHeaderError, match=re.escape(complaint)):
        parse_script(write(tmp_path, name, text))


async def test_a_script_unknown_to_the_server_is_loaded_on_noscript_and_run(
    tmp_path: Path, hot: RedisCluster, unique_tag: str
) -> None:
    # A body no server has seen (the tag makes its sha new), so the first EVALSHA is NOSCRIPT.
    text = GOOD.replace("a fine script.", f"a fine script {unique_tag}.")
    write(tmp_path, "thing_touch-1.lua", text)
    registry = ScriptRegistry(tmp_path)
    sha = registry["thing_touch"].sha
    await hot.initialize()
    key = keys.job_record(unique_tag)
    node = hot.get_node_from_key(key)
    assert await hot.execute_command("SCRIPT EXISTS", sha, target_nodes=node) == [0]
    reply = await registry.call("thing_touch", keys=[key], args=["v"], client=hot)
    assert (reply.code, reply.values) == (Code.OK, ("v",))
    assert await hot.get(key) == "v"
    assert await hot.execute_command("SCRIPT EXISTS", sha, target_nodes=node) == [1]


async def test_an_undeclared_reply_is_a_bug_not_a_result(tmp_path: Path, hot: RedisCluster) -> None:
    write(tmp_path, "thing_touch-1.lua", GOOD)
    registry = ScriptRegistry(tmp_path)
    # Another script's code ("FULL") is not one thing_touch declares.
    object.__setattr__(registry["thing_touch"], "codes", frozenset({"FULL"}))
    with pytest.raises(ScriptReplyError, match="not a declared code"):
        await registry.call("thing_touch", keys=[keys.job_record("x")], args=["v"], client=hot)


def _imports_hotstate(node: ast.AST) -> bool:
    if isinstance(node, ast.ImportFrom):
        return node.level > 0 or (node.module or "").startswith("hotstate")
    return isinstance(node, ast.Import) and any(
        alias.name.startswith("hotstate") for alias in node.names
    )


def test_codes_import_nothing_of_hotstate() -> None:
    """The loader depends on the codes, never the other way round (not even for type hints)."""
    tree = ast.parse(Path(codes.__file__).read_text())
    assert [ast.unparse(node) for node in ast.walk(tree) if _imports_hotstate(node)] == []
