#!/bin/bash
# Idempotent set-up for a Debian 12 host: apt packages, the venv, the
# vSphere simulator build.  Quick when everything is present.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  python3-venv python3-newt python3-gi python3-dbus python3-libvirt python3-openvswitch
  dbus-daemon openvswitch-switch openvswitch-common
  libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils
  golang-go golang-github-vmware-govmomi-dev
  redis-server tmux iproute2 tcpdump procps util-linux systemd openssl coreutils
  debootstrap systemd-container
)
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

stamp=.venv/.installed
if [ ! -x .venv/bin/python ] || [ pyproject.toml -nt "$stamp" ]; then
  [ -x .venv/bin/python ] || /usr/bin/python3 -m venv --system-site-packages .venv
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
  touch "$stamp"
fi

# The vSphere simulator (our Go main around govmomi's simulator package).
if [ -f sandbox/vcsim/main.go ]; then
  .venv/bin/python -m sandbox.vcsim build
fi
# The sandbox's host image (cached in ~/.cache/hostsetup/image-<recipe hash>).
if [ -f sandbox/image.py ]; then
  .venv/bin/python -m sandbox.image build
fi
