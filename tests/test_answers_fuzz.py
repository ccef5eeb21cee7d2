"""Property-based: generated and byte-mutated answers files through the loader and validation.

Properties, for every input: the answers load (a valid plan can be made) or
they are refused with :class:`AnswersError` (exit 3); every problem names a
line; nothing else is raised (no internal error); a secret value written in
clear under a secret key is never in any problem; each input finishes in
bounded time (a hang detector, not a speed target: see bench/bench_answers.py).

`make test` runs a seeded, derandomized sample (profile ``ci``); `make fuzz`
runs many more, randomized (``HYPOTHESIS_PROFILE=fuzz``).
"""

from __future__ import annotations

import json
import os
import random
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import hostsetup
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wizard import answers

settings.register_profile(
    "ci", max_examples=1000, derandomize=True, database=None, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "fuzz", max_examples=25_000, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

SECRET = "Hunter2-clear-text-pw"
HANG = 20.0  # seconds: far above any real input, only a hang trips it
LINE = re.compile(r"\(line \d+\)")
WORK = Path(tempfile.mkdtemp(prefix="hostsetup-fuzz-"))


def _seeds() -> list[str]:
    """Valid files (the template, with and without fleet hosts) and one with a clear password."""
    text = answers.template()
    start = text.index("# hosts:")
    fleet = text[:start] + "".join(line.removeprefix("# ") + "\n"
                                   for line in text[start:].splitlines())
    clear = re.sub(r"password: \S+", f"password: {SECRET}", text)
    fleet_clear = fleet + f"  vsphere_network: {{password: {SECRET}}}\n"
    return [text, fleet, clear, fleet_clear]


SEEDS = _seeds()
# What the byte-level mutations insert: YAML's special forms, bad bytes, big values.
TOKENS = [b"&a ", b"*a", b"<<: ", b"!!omap ", b"!!set ", b"!x ", b"!!python/name:os.system ",
          b"[", b"]", b"{", b"}", b"? ", b": ", b"- ", b"\n", b"  ", b"'", b'"', b"\\", b"#",
          b"\x00", b"\x1b", b"\xff", b"\xe9", b"\xc3", b"\t", b"\r", b"%YAML 1.1\n", b"---\n",
          b"~", b"1", b"-1", b"0x1F", b"1e999", b"2001-13-45", b"9" * 80, b"password: ",
          b"[" * 40, b",", b"|", b">", b"null", b"true", b"'\xc2\x85'"]


def outcome(data: bytes) -> tuple[bool, list[str]]:
    """Load ``data`` as an answers file: (valid, problems); anything else raised fails."""
    f = WORK / "answers.yaml"
    f.write_bytes(data)
    t0 = time.monotonic()
    try:
        answers.load(f)
        valid, problems = True, []
    except answers.AnswersError as exc:
        valid, problems = False, exc.problems
    assert time.monotonic() - t0 < HANG
    return valid, problems


def _paths_of(node: Any, marker: str, path: tuple[str | int, ...] = ()) -> list[tuple[Any, ...]]:
    """Key paths where ``marker`` is in a key or a value of a plain tree."""
    if isinstance(node, dict):
        return [p for k, v in node.items()
                for p in ([(*path, k)] if marker in str(k) else []) + _paths_of(v, marker,
                                                                                (*path, k))]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _paths_of(v, marker, (*path, i))]
    return [path] if marker in str(node) else []


def _secret_only(data: bytes) -> bool:
    """True if the marker is in the file only as the value of a secret key."""
    try:
        tree = answers._plain(answers.read_yaml(WORK / "answers.yaml"))
    except answers.AnswersError:
        return True  # refused while reading: nothing of the content may be shown
    found = _paths_of(tree, SECRET)
    secret = answers.secret_paths()
    for path in found:
        keys = tuple(p for p in path if isinstance(p, str))
        if keys[:1] == ("hosts",):
            keys = keys[1:]  # a host's override of a base section
        if keys not in secret:
            return False
    return True


def check(data: bytes) -> tuple[bool, list[str]]:
    """The properties of one input (see the module docstring)."""
    valid, problems = outcome(data)
    for problem in problems:
        assert LINE.search(problem), problem
    if SECRET in "\n".join(problems):
        assert not _secret_only(data), problems
    return valid, problems


def mutate(seed: bytes, ops: list[tuple[int, int, bytes]]) -> bytes:
    """Apply (kind, position, payload) edits: insert, delete, replace, repeat a line."""
    out = bytearray(seed)
    for kind, pos, payload in ops:
        at = pos % (len(out) + 1)
        if kind == 0:
            out[at:at] = payload
        elif kind == 1:
            del out[at:at + len(payload)]
        elif kind == 2:
            out[at:at + len(payload)] = payload
        else:
            start = out.rfind(b"\n", 0, at) + 1
            end = out.find(b"\n", at)
            end = len(out) if end < 0 else end + 1
            out[end:end] = out[start:end]
    return bytes(out)


OPS = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1 << 16),
                         st.sampled_from(TOKENS) | st.binary(min_size=1, max_size=4)),
               min_size=1, max_size=6)


@given(seed=st.sampled_from(SEEDS), ops=OPS)
def test_byte_mutations(seed: str, ops: list[tuple[int, int, bytes]]) -> None:
    check(mutate(seed.encode(), ops))


# Structured documents: the template's data with values replaced, added or removed.
SCALARS = (st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70)
           | st.floats(allow_nan=True) | st.text(max_size=12)
           | st.sampled_from(["all", "system", "env:X", "file:/dev/zero", "unix:/x", "br0",
                              SECRET, "qemu:///system", "0000:00:20.0", "\u00e9"]))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


def _paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(node, dict):
        return [path] + [p for k, v in node.items() for p in _paths(v, (*path, k))]
    if isinstance(node, list):
        return [path] + [p for i, v in enumerate(node) for p in _paths(v, (*path, i))]
    return [path]


def _edit(tree: Any, path: tuple[Any, ...], key: str | None, value: Any) -> Any:
    """``tree`` with the node at ``path`` replaced (or, with ``key``, a key set in it)."""
    if not path:
        if key is not None and isinstance(tree, dict):
            return {**tree, key: value}
        return value
    head, *rest = path
    if isinstance(tree, dict):
        return {**tree, head: _edit(tree[head], tuple(rest), key, value)}
    copy = list(tree)
    copy[head] = _edit(tree[head], tuple(rest), key, value)
    return copy


@st.composite
def documents(draw: st.DrawFn) -> bytes:
    tree = answers._plain(answers._yaml().load(draw(st.sampled_from(SEEDS))))
    names = [str(f) for s in answers.model().model_fields.values()
             for m in answers._models_in(s.annotation) for f in m.model_fields]
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(_paths(tree)))
        key = draw(st.none() | st.sampled_from(names) | st.text(max_size=6))
        tree = _edit(tree, path, key, draw(VALUES))
    # Block style (as the template), or JSON, which is YAML in flow style.
    if draw(st.booleans()):
        return answers.dump_yaml(tree).encode()
    return json.dumps(tree, indent=1).encode()


@given(doc=documents())
def test_generated_documents(doc: bytes) -> None:
    check(doc)


@pytest.mark.parametrize("seed", range(6))
def test_seeded_cli_runs_exit_3(seed: int) -> None:
    """End to end: a mutated file the loader refuses makes `hostsetup plan` exit 3 with the
    same problems (and no backend is contacted: validation comes first)."""
    rnd = random.Random(seed)
    while True:
        ops = [(rnd.randrange(4), rnd.randrange(1 << 16), rnd.choice(TOKENS))
               for _ in range(rnd.randint(1, 4))]
        data = mutate(SEEDS[seed % len(SEEDS)].encode(), ops)
        valid, problems = check(data)
        if not valid:
            break
    f = WORK / f"cli-{seed}.yaml"
    f.write_bytes(data)
    res = hostsetup("plan", "--answers", str(f), timeout=60)
    assert res.returncode == 3, res.stderr
    expected = [p.replace(str(WORK / "answers.yaml"), str(f)) for p in problems]
    assert [line.strip() for line in res.stderr.splitlines()[1:]] == expected
    assert "Traceback" not in res.stderr and SECRET not in res.stdout + res.stderr
