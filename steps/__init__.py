"""The steps, in the order the wizard runs them (one registry line each)."""

from __future__ import annotations

from steps.base import Step
from steps.ivshmem import IvshmemStep
from steps.ovs_mirror import OvsMirrorStep
from steps.services import ServicesStep
from steps.vsphere_network import VSphereNetworkStep

REGISTRY: list[Step] = [
    ServicesStep(),
    OvsMirrorStep(),
    VSphereNetworkStep(),
    IvshmemStep(),
]


def by_name() -> dict[str, Step]:
    """The registered steps keyed by their answers-file name."""
    return {s.name: s for s in REGISTRY}
