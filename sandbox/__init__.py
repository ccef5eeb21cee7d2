"""The sandbox: virtualization hosts booted from a Debian image (real systemd, Open vSwitch,
libvirtd, NetworkManager), plus the vSphere simulator and Redis, for the demo and the tests.

Not part of the installed product (``pyproject.toml`` leaves it out); ``hostsetup sandbox``
imports it from the source checkout.  See README, "The sandbox".
"""
