"""Sandbox component: the vSphere simulator (govmomi's ``simulator`` package).

Our Go ``main`` (``vcsim/*.go``) is built with Debian's golang-go against
Debian's golang-github-vmware-govmomi-dev into a cache directory, named by the
digest of its sources.  It serves the real vSphere SOAP API over TLS (a
fresh self-signed certificate per start) on a free local port.

``python -m sandbox.vcsim build`` builds it (quick when up to date);
``scripts/setup.sh`` calls it.  ``HOSTSETUP_VCSIM_MODEL`` (esx | vcenter),
``HOSTSETUP_VCSIM_HOSTS`` and ``HOSTSETUP_VCSIM_VMS`` shape the inventory of
``sandbox up``; tests call :func:`start` directly.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox.core import Sandbox, SandboxError

SOURCE = Path(__file__).parent / "vcsim" / "main.go"
GOPATH = "/usr/share/gocode"
USER = "root"


def cache_dir() -> Path:
    """Where the binary is kept: $HOSTSETUP_CACHE or ~/.cache/hostsetup."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hostsetup"
    path = Path(os.environ.get("HOSTSETUP_CACHE", default))
    path.mkdir(parents=True, exist_ok=True)
    return path


def build() -> Path:
    """Build the simulator unless a binary of this very source is cached; returns it.

    The binary is named by the digest of its sources, so checkouts with different
    sources (branches, worktrees) never run each other's simulator."""
    import hashlib

    cache = cache_dir()
    sha = hashlib.sha256()
    for source in sorted(SOURCE.parent.glob("*.go")):
        sha.update(source.name.encode() + b"\0" + source.read_bytes())
    digest = sha.hexdigest()[:16]
    binary = cache / f"vcsim-{digest}"
    # Several sandboxes may start at once: one builds, the others wait and reuse.
    with open(cache / "vcsim.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.exists():
            return binary
        tmp = cache / f"vcsim-{digest}.new"
        env = {**os.environ, "GOPATH": GOPATH, "GO111MODULE": "off",
               "GOCACHE": str(cache / "go-build"), "GOFLAGS": ""}
        res = subprocess.run(
            ["go", "build", "-o", str(tmp), "."], cwd=SOURCE.parent, env=env,
            capture_output=True, text=True, stdin=subprocess.DEVNULL,
        )
        if res.returncode != 0:
            raise SandboxError(
                "building the vSphere simulator failed (needs golang-go and "
                f"golang-github-vmware-govmomi-dev):\n{res.stderr.strip()}"
            )
        tmp.replace(binary)
    return binary


@dataclass(frozen=True)
class Vcsim:
    """A running simulator: how to reach it and what it holds."""

    url: str
    host: str
    port: int
    thumbprint: str
    cert: Path
    password_file: Path
    faults: Path
    hosts: list[str]
    vms: list[str]


def write_secret(path: Path, value: str) -> None:
    """Write a secret file readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    os.chmod(path, 0o600)


def start(sb: Sandbox, model: str = "esx", hosts: int = 3, vms: int = 2,
          name: str = "vcsim") -> Vcsim:
    """Start a simulator under ``sb.dir/<name>`` and wait until it serves."""
    binary = build()
    work = sb.path(name, "tmp")
    work.mkdir(exist_ok=True)
    base = work.parent
    password_file = base / "password"
    write_secret(password_file, secrets.token_urlsafe(18))
    info_file, cert, faults = base / "info.json", base / "cert.pem", base / "faults"
    info_file.unlink(missing_ok=True)
    faults.touch()
    sb.spawn(
        name,
        [str(binary), "-model", model, "-hosts", str(hosts), "-vms", str(vms),
         "-listen", "127.0.0.1:0", "-user", USER, "-password-file", str(password_file),
         "-cert", str(cert), "-info-file", str(info_file), "-fail-file", str(faults)],
        env={"TMPDIR": str(work)},  # the simulated datastore lives under DIR
        ready=info_file.exists,
        # Building a large inventory takes a while (about 10 s per 10,000 VMs idle).
        timeout=60 + vms / 100,
    )
    info: dict[str, Any] = json.loads(info_file.read_text())
    hostport = info["url"].split("://", 1)[1].split("/", 1)[0]
    server, _, port = hostport.rpartition(":")
    return Vcsim(info["url"], server, int(port), info["thumbprint"], cert, password_file,
                 faults, info["hosts"], info["vms"])


def answers(sim: Vcsim) -> dict[str, Any]:
    """A realistic ``vsphere_network`` section aimed at ``sim``."""
    return {
        "server": sim.host,
        "port": sim.port,
        "user": USER,
        "password": f"file:{sim.password_file}",
        "thumbprint": sim.thumbprint,
        "hosts": "all",
        "vswitches": [{"name": "vSwitch1", "num_ports": 128, "mtu": 9000, "nics": ["vmnic1"]}],
        "portgroups": [
            {"name": "Monitoring", "vswitch": "vSwitch1", "vlan": 4095,
             "allow_promiscuous": True, "forged_transmits": True, "mac_changes": False},
            {"name": "EastWest-20", "vswitch": "vSwitch1", "vlan": 20,
             "allow_promiscuous": False, "forged_transmits": False, "mac_changes": False},
        ],
        "vm_adapters": [
            {"vm": sim.vms[0], "adapter": "Network adapter 1", "portgroup": "Monitoring"},
        ],
    }


def up(sb: Sandbox) -> None:
    """Start the simulator; export its URL/thumbprint; answer ``vsphere_network``."""
    sim = start(
        sb,
        model=os.environ.get("HOSTSETUP_VCSIM_MODEL", "esx"),
        hosts=int(os.environ.get("HOSTSETUP_VCSIM_HOSTS", "3")),
        vms=int(os.environ.get("HOSTSETUP_VCSIM_VMS", "4")),
    )
    sb.export("HOSTSETUP_VSPHERE_URL", sim.url)
    sb.export("HOSTSETUP_VSPHERE_THUMBPRINT", sim.thumbprint)
    sb.export("HOSTSETUP_VSPHERE_CA", str(sim.cert))
    sb.export("HOSTSETUP_VSPHERE_USER", USER)
    sb.export("HOSTSETUP_VSPHERE_PASSWORD_FILE", str(sim.password_file))
    sb.export("HOSTSETUP_VCSIM_FAULTS", str(sim.faults))
    sb.set_answers("vsphere_network", answers(sim))


def main(argv: list[str] | None = None) -> int:
    """``python -m sandbox.vcsim build``: build the simulator (idempotent)."""
    parser = argparse.ArgumentParser(prog="python -m sandbox.vcsim")
    parser.add_argument("command", choices=["build"])
    parser.parse_args(argv)
    try:
        print(build())
    except SandboxError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
