"""Hostile answers files: exit 3 with key path and line, never a crash, hang, leak or blow-up.

Each file goes through the real CLI (`hostsetup plan`) in a process limited to
600 MB of address space, with a timeout that only catches hangs (speed is
measured in bench/bench_answers.py).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

from steps.base import SECRET_MAX_BYTES, SecretUnavailable, read_regular, resolve_secret
from wizard import answers

SECRET = "Hunter2-clear-text-pw"
VSPHERE = "version: 1\nvsphere_network:\n  server: vc.example.net\n"
MEMORY = 600 * 1024 * 1024


def plan(path: Path | str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`hostsetup plan --answers PATH` with bounded memory; a hang fails the test."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))

    return subprocess.run([sys.executable, "-m", "wizard", "plan", "--answers", str(path)],
                          cwd=ROOT, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=60, preexec_fn=limit, env={**os.environ, **(env or {})})


def rejected(res: subprocess.CompletedProcess[str], *expected: str) -> str:
    """The run exited 3 with every expected text and nothing that must not be there."""
    out = res.stdout + res.stderr
    assert res.returncode == 3, out
    for text in expected:
        assert text in out, out
    assert "Traceback" not in out and "internal error" not in out, out
    assert SECRET not in out, out
    return out


CASES = {
    "block nesting": ("version: 1\nx:\n" + "".join("  " * i + "- \n" for i in range(40)),
                      "nested deeper than 32 levels"),
    "flow nesting": ("version: 1\nx: " + "[" * 200_000 + "]" * 200_000 + "\n",
                     "(line 2): a line longer than 65536 characters"),
    "flow nesting on short lines": ("version: 1\nx: " + "[\n" * 5000 + "]\n" * 5000,
                                    "nested deeper than 32 levels"),
    "NUL byte": ("version: 1\nservices:\n  bus: sys\x00tem\n",
                 "(line 3): control character U+0000 is not allowed (column 11)"),
    "escape byte": ("version: 1\n\x1b[31m: x\n",
                    "(line 2): control character U+001B is not allowed (column 1)"),
    "escaped NUL": ('version: 1\nservices:\n  bus: "sys\\0tem"\n',
                    "(line 3): control character U+0000 in a value is not allowed (column 8)"),
    "escaped surrogate": ('version: 1\n"\\ud800": 1\n',
                          "(line 2): control character U+D800 in a value is not allowed"),
    "non-UTF-8": (b"version: 1\nservices:\n  bus: caf\xe9\n",
                  "(line 3): not UTF-8 text (answers files are UTF-8) (column 11)"),
    "merge key with alias": ("version: 1\nbase: &b {timeout: 5}\nservices:\n  <<: *b\n",
                             "(line 2): anchors and aliases (&name, *name) are not allowed"),
    "merge key inline": ("version: 1\nservices:\n  <<: {timeout: 5}\n",
                         "(line 3): merge keys (<<) are not allowed"),
    "alias bomb": ("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n"
                   "c: [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n", "anchors and aliases"),
    "!!omap": ("version: 1\nservices: !!omap [{timeout: 5}]\n",
               "(line 2): the tag !!omap is not allowed"),
    "!!set": ("version: 1\nservices: !!set {a, b}\n", "the tag !!set is not allowed"),
    "python tag": ("version: 1\nx: !!python/object:os.system {}\n",
                   "the tag !!python/... is not allowed"),
    "local tag": ("version: 1\nx: !secret y\n", "the tag (a tag of its own, not shown) is not"),
    "password starting with !": (VSPHERE + f"  password: !{SECRET}\n", "(line 4): the tag (a "),
    "mapping as key": ("version: 1\n? {a: 1}\n: 2\n", "(line 2): a key must be a string"),
    "number as key": ("version: 1\n1: 2\n", "(line 2): a key must be a string"),
    "null as key": ("version: 1\n~: 2\n", "(line 2): a key must be a string"),
    "mixed-type list": ("version: 1\nivshmem:\n  domains: [1, 1, a, a]\n",
                        "ivshmem.domains[0] (line 3): Input should be a valid string (got 1)"),
    "mixed-type list per item": ("version: 1\nivshmem:\n  domains: [vm1, 2, {a: b}]\n",
                                 "ivshmem.domains[1] (line 3)", "ivshmem.domains[2] (line 3)"),
    "libvirt URI not ASCII": ("version: 1\nivshmem:\n  uri: \u00e9\n",
                              "ivshmem.uri (line 3): '\u00e9' is not a libvirt URI"),
    "libvirt URI a PCI address": ("version: 1\nivshmem:\n  uri: '0000:00:20.0'\n",
                                  "ivshmem.uri (line 3): '0000:00:20.0' is not a libvirt URI"),
    "libvirt URI bad port": ("version: 1\nivshmem:\n  uri: qemu+tcp://h:99999/system\n",
                             "ivshmem.uri (line 3)"),
    "OVSDB remote": ("version: 1\novs_mirror:\n  db: tcp:no such host:6640\n",
                     "ovs_mirror.db (line 3): 'tcp:no such host:6640' is not an OVSDB remote"),
    "OVSDB port": ("version: 1\novs_mirror:\n  db: tcp:127.0.0.1:0\n", "ovs_mirror.db (line 3)"),
    "D-Bus address": ("version: 1\nservices:\n  bus: 'unix:path'\n",
                      "services.bus (line 3): 'unix:path' is not 'system' nor a D-Bus address"),
    "D-Bus address of ivshmem": ("version: 1\nivshmem:\n  domains: [a]\n  bus: 'unix:path=a b'\n",
                                 "ivshmem.bus (line 4): 'unix:path=a b' is not 'system' nor"),
    "repeated key": ("version: 1\nivshmem:\n  bus: system\n  domains: [a]\n  bus: x\n",
                     "(line 5): the key 'bus' is repeated (first on line 3)"),
    "vSphere server URL": (VSPHERE.replace("vc.example.net", "https://vc/sdk")
                           + "  password: env:X\n", "vsphere_network.server (line 3): "
                           "'https://vc/sdk' is not a host name or an address"),
    "password twice": (VSPHERE + f"  password: {SECRET}\n  password: {SECRET}x\n",
                       "(line 5): the key 'password' is repeated (first on line 4)"),
    "password in clear": (VSPHERE + f"  password: {SECRET}\n",
                          "vsphere_network.password (line 4): must be a secret reference"),
    "password a number": (VSPHERE + "  password: 123456789\n",
                          "vsphere_network.password (line 4): Input should be a valid string"),
    "password in a broken file": (VSPHERE + f"  password: \"{SECRET}\\q\"\n",
                                  "(line 4): not valid YAML: found unknown escape character 'q'"),
    "password in an unclosed quote": (VSPHERE + f"  password: '{SECRET}\n", "not valid YAML"),
    "missing key": ("version: 1\novs_mirror:\n  mirrors:\n  - name: m\n    output_port: p\n",
                    "ovs_mirror.mirrors[0].bridge (line 4): required answer missing"),
    "missing version": ("services: {}\n", "version (line 1): required answer missing"),
    "long number": ("version: 1\nservices:\n  timeout: " + "9" * 5000 + "\n",
                    "(line 3): a number longer than 64 characters"),
    "impossible date": ("version: 1\nservices:\n  bus: 2001-13-45\n",
                        "services.bus (line 3): '2001-13-45' is not 'system'"),
    "too many values": ("version: 1\nx:\n" + "- 1\n" * 12_000,
                        f"more than {answers.MAX_NODES} values in the file"),
    "too many lines": ("version: 1\n" + "#\n" * 30_000,
                       f"(line {answers.MAX_LINES + 1}): more than {answers.MAX_LINES} lines"),
    "long key": ("version: 1\n" + "k" * 300 + ": 1\n",
                 "(line 2): a key must have 1 to 256 characters"),
    "key like a pydantic tag": ("version: 1\nh[osts]: 1\nservices:\n  list[str]: 2\n",
                                "h[osts] (line 2): unknown key",
                                "services.list[str] (line 4): unknown key"),
    "empty key": ("version: 1\nservices:\n  '': 1\n", "(line 3): a key must have 1 to 256"),
    "two documents": ("version: 1\n---\nversion: 1\n", "(line 2): not valid YAML"),
    "not a mapping": ("- version: 1\n", "(line 1): expected a mapping"),
    "empty": ("", "(line 1): expected a mapping"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_file_exits_3_with_line(name: str, tmp_path: Path) -> None:
    content, *expected = CASES[name]
    f = tmp_path / "a.yaml"
    if isinstance(content, bytes):
        f.write_bytes(content)
    else:
        f.write_text(content)
    rejected(plan(f), *expected)


def test_password_of_the_wrong_type_is_not_shown(tmp_path: Path) -> None:
    f = tmp_path / "a.yaml"
    f.write_text(VSPHERE + "  password: 987654321\n")
    out = rejected(plan(f), "vsphere_network.password (line 4): Input should be a valid string")
    assert "987654321" not in out


def test_huge_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    f = tmp_path / "big.yaml"
    with open(f, "w") as out:
        out.write("version: 1\n")
        out.truncate(50 * 1024 * 1024)  # 50 MB (sparse)
    rejected(plan(f), f"{f}: cannot read: larger than {answers.MAX_BYTES} bytes")


@pytest.mark.parametrize("special", ["/dev/zero", "/dev/urandom", "fifo", "dir"])
def test_answers_that_are_not_a_regular_file(special: str, tmp_path: Path) -> None:
    path = Path(special)
    if special == "fifo":
        path = tmp_path / "fifo"
        os.mkfifo(path)  # nobody writes: opening it to read must not wait
    elif special == "dir":
        path = tmp_path
    kind = {"fifo": "a FIFO", "dir": "a directory"}.get(special, "a character device")
    rejected(plan(path), f"{path}: cannot read: not a regular file ({kind})")


@pytest.mark.parametrize("special", ["/dev/zero", "/dev/urandom", "fifo", "dir", "big",
                                     "latin1", "missing"])
def test_secret_file_is_bounded_and_never_shown(special: str, tmp_path: Path) -> None:
    """A `file:` secret that cannot be used: exit 3 at its key and line, in time, no content."""
    path = {"fifo": tmp_path / "fifo", "dir": tmp_path, "big": tmp_path / "big",
            "latin1": tmp_path / "latin1", "missing": tmp_path / "none"}.get(special,
                                                                           Path(special))
    if special == "fifo":
        os.mkfifo(path)
    elif special == "big":
        path.write_text(SECRET * (SECRET_MAX_BYTES // len(SECRET) + 1))
    elif special == "latin1":
        path.write_bytes(SECRET.encode() + b"\xe9")
    f = tmp_path / "a.yaml"
    f.write_text(VSPHERE + f"  password: file:{path}\n  insecure: true\n")
    reason = {"fifo": "not a regular file (a FIFO)", "dir": "not a regular file (a directory)",
              "big": f"larger than {SECRET_MAX_BYTES} bytes", "latin1": "is not UTF-8 text",
              "missing": "No such file or directory"}.get(special,
                                                          "not a regular file (a character device)")
    rejected(plan(f), f"vsphere_network.password (line 4): secret file:{path}", reason)


def test_read_regular_reads_a_file_and_refuses_one_byte_over(tmp_path: Path) -> None:
    f = tmp_path / "s"
    f.write_bytes(b"x" * 10)
    assert read_regular(f, 10) == b"x" * 10
    with pytest.raises(ValueError, match="larger than 9 bytes"):
        read_regular(f, 9)
    f.write_text(SECRET + "\n")
    assert resolve_secret(f"file:{f}") == SECRET
    f.write_text(SECRET + "\udcff", errors="surrogateescape")
    with pytest.raises(SecretUnavailable) as exc:
        resolve_secret(f"file:{f}", "password")
    assert exc.value.path == ("password",) and SECRET not in str(exc.value)


def test_secret_paths_come_from_the_models() -> None:
    assert ("vsphere_network", "password") in answers.secret_paths()
    assert all(path[-1] != "server" for path in answers.secret_paths())


def test_sandbox_style_connection_strings_are_accepted(tmp_path: Path) -> None:
    f = tmp_path / "a.yaml"
    f.write_text("version: 1\n"
                 "services: {bus: 'unix:path=/tmp/x/dbus/system_bus_socket'}\n"
                 "ovs_mirror: {db: 'unix:/tmp/x/ovs/db.sock'}\n"
                 "ivshmem: {uri: 'qemu:///system?socket=/tmp/x/libvirt/run/libvirt-sock',"
                 " bus: 'unix:path=/tmp/x/dbus/system_bus_socket'}\n"
                 "vsphere_network: {server: 127.0.0.1, password: env:X}\n")
    loaded = answers.load(f)
    assert sorted(loaded.sections) == ["ivshmem", "ovs_mirror", "services", "vsphere_network"]
    for ok in ("tcp:[::1]:6640", "ssl:ovs.example.net:6640", "tcp:10.0.0.1:6640"):
        f.write_text(f"version: 1\novs_mirror: {{db: '{ok}', ssl_key: k, ssl_cert: c, "
                     "ssl_ca: a}\n")
        assert answers.load(f).sections["ovs_mirror"].db == ok  # type: ignore[attr-defined]


def test_what_hostsetup_writes_it_reads(tmp_path: Path) -> None:
    """The writer never uses anchors (the loader refuses them): a value used twice is copied."""
    shared = {"name": "m", "bridge": "br0", "select_all": True, "output_port": "p"}
    f = tmp_path / "a.yaml"
    answers.write(f, {"version": 1, "ovs_mirror": {"mirrors": [shared, {**shared,
                                                                        "bridge": "br1"}],
                                                   "prune": False}})
    assert "&" not in f.read_text() and "*" not in f.read_text()
    answers.write(f, {"version": 1, "ivshmem": {"domains": (d := ["vm1.service"])},
                      "services": {"require": d}})
    assert answers.load(f).sections["ivshmem"].domains == d  # type: ignore[attr-defined]

