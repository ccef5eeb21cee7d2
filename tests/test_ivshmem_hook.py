"""The ivshmem hook script, called as libvirt calls it: argv + domain XML on stdin.

The hook is copied into a temporary hooks directory with a configuration
written by the step's own ``hook_config``; it is run with the system
``/usr/bin/python3`` through its shebang, as libvirtd runs it.
"""

from __future__ import annotations

import os
import shutil
import stat
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from helpers import DOMAIN, SHMEM, call, configure, shmems

from steps.ivshmem import CHAINED_NAME, HOOK_SOURCE


@pytest.mark.parametrize("op", ["restore", "migrate"])
def test_incoming_xml_gets_the_device(ivs_hooks: Path, tmp_path: Path, op: str) -> None:
    log = tmp_path / "hook.log"
    configure(ivs_hooks, log, name="shm0", size=8, domains=["vm1"], address="00:0a.0")
    res = call(ivs_hooks / "hostsetup-ivshmem", "vm1", op, "begin",
               DOMAIN.format(name="vm1", extra=""))
    assert res.returncode == 0, res.stderr
    (dev,) = shmems(res.stdout)
    assert dev.get("name") == "shm0"
    assert dev.find("model").get("type") == "ivshmem-plain"  # type: ignore[union-attr]
    assert dev.findtext("size") == "8" and dev.find("size").get("unit") == "M"  # type: ignore[union-attr]
    assert dev.find("address").get("slot") == "0x0a"  # type: ignore[union-attr]
    assert "added the device 'shm0'" in log.read_text()


def test_incoming_xml_with_device_is_kept_and_others_untouched(ivs_hooks: Path,
                                                               tmp_path: Path) -> None:
    configure(ivs_hooks, tmp_path / "hook.log", name="shm0", domains=["vm1"])
    hook = ivs_hooks / "hostsetup-ivshmem"
    res = call(hook, "vm1", "restore", "begin",
               DOMAIN.format(name="vm1", extra=SHMEM.format(name="shm0")))
    assert res.returncode == 0 and len(shmems(res.stdout)) == 1
    other = call(hook, "vm2", "restore", "begin", DOMAIN.format(name="vm2", extra=""))
    assert other.returncode == 0 and other.stdout == b""  # empty: libvirt keeps its XML


def test_prepare_refuses_a_chosen_domain_without_device(ivs_hooks: Path, tmp_path: Path) -> None:
    log = tmp_path / "hook.log"
    configure(ivs_hooks, log, name="shm0", domains="all", enforce="refuse")
    res = call(ivs_hooks / "hostsetup-ivshmem", "vm1", "prepare", "begin",
               DOMAIN.format(name="vm1", extra=""))
    assert res.returncode != 0
    assert b"lacks the ivshmem device 'shm0'" in res.stderr
    assert "start refused" in log.read_text()


def test_prepare_warns_and_prepares_shm(ivs_hooks: Path, tmp_path: Path,
                                        ivs_shm_name: str) -> None:
    log = tmp_path / "hook.log"
    configure(ivs_hooks, log, name=ivs_shm_name, size=2, domains="all", enforce="warn",
              mode="0640", owner="root:root")
    res = call(ivs_hooks / "hostsetup-ivshmem", "vm1", "prepare", "begin",
               DOMAIN.format(name="vm1", extra=""))
    assert res.returncode == 0, res.stderr
    assert "(enforce: warn)" in log.read_text()
    st = os.stat(f"/dev/shm/{ivs_shm_name}")
    assert st.st_size == 2 * 1024 * 1024
    assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_uid == 0


def test_qemu_wrapper_method(ivs_hooks: Path, tmp_path: Path, ivs_shm_name: str) -> None:
    wrapper = f"/opt/w/qemu-system-x86_64-ivshmem-{ivs_shm_name}"
    configure(ivs_hooks, tmp_path / "hook.log", wrappers={"/usr/bin/qemu-system-x86_64": wrapper},
              name=ivs_shm_name, method="qemu-wrapper", enforce="refuse")
    hook = ivs_hooks / "hostsetup-ivshmem"
    res = call(hook, "vm1", "migrate", "begin", DOMAIN.format(name="vm1", extra=""))
    root = ET.fromstring(res.stdout)
    assert root.findtext("devices/emulator") == wrapper and not shmems(res.stdout)
    # prepare begin: a domain on the wrapper has the device; one on the real emulator not.
    assert call(hook, "vm1", "prepare", "begin", res.stdout.decode()).returncode == 0
    assert call(hook, "vm1", "prepare", "begin",
                DOMAIN.format(name="vm1", extra="")).returncode != 0


def test_chained_third_party_hook_runs_first(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    seen = tmp_path / "third-party.log"
    # A third-party hook that logs its calls, adds <description> on restore, and
    # refuses to start 'blocked'.
    (hooks / CHAINED_NAME).write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {seen}\n'
        '[ "$1" = blocked ] && [ "$2" = prepare ] && exit 3\n'
        '[ "$2" = restore ] && sed "s#<devices>#<description>3rd</description><devices>#"\n'
        "exit 0\n")
    (hooks / CHAINED_NAME).chmod(0o755)
    shutil.copy(HOOK_SOURCE, hooks / "qemu")
    (hooks / "qemu").chmod(0o755)
    configure(hooks, tmp_path / "hook.log", chain=True, name="shm0", domains="all")
    res = call(hooks / "qemu", "vm1", "restore", "begin", DOMAIN.format(name="vm1", extra=""))
    assert res.returncode == 0, res.stderr
    root = ET.fromstring(res.stdout)
    assert root.findtext("description") == "3rd" and len(shmems(res.stdout)) == 1
    refused = call(hooks / "qemu", "blocked", "prepare", "begin",
                   DOMAIN.format(name="blocked", extra=SHMEM.format(name="shm0")))
    assert refused.returncode == 3
    assert seen.read_text().splitlines() == ["vm1 restore begin -", "blocked prepare begin -"]


def test_unconfigured_hook_does_nothing(ivs_hooks: Path) -> None:
    res = call(ivs_hooks / "hostsetup-ivshmem", "vm1", "restore", "begin",
               DOMAIN.format(name="vm1", extra=""))
    assert res.returncode == 0 and res.stdout == b""
