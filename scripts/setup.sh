#!/bin/sh
# One-time set-up of a fresh Debian 12 machine for patchd's demo and tests.
# Installs the Debian packages (python-apt, libsolv, btrfsutil... come only
# from the distribution), then a .venv from /usr/bin/python3 with
# --system-site-packages holding the dev tools. Safe to re-run.
set -eu
cd "$(dirname "$0")/.."

DEBS="python3-apt python3-solv python3-dnf python3-rpm python3-btrfsutil python3-venv
python3-structlog python3-psutil python3-cryptography python3-dbus-next python3-pytest
btrfs-progs dpkg-dev apt-utils fakeroot gnupg mmdebstrap util-linux
rpm createrepo-c dnf dbus dbus-daemon polkitd pkexec systemd-container busybox-static"

if [ "$(id -u)" != 0 ]; then
    echo "setup: must run as root (it installs packages and uses loop devices)" >&2
    exit 1
fi
missing=""
for deb in $DEBS; do
    dpkg-query -W -f='${Status}' "$deb" 2>/dev/null | grep -q "ok installed" || missing="$missing $deb"
done
if [ -n "$missing" ]; then
    echo "setup: installing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $missing
fi

if [ ! -x .venv/bin/python ]; then
    /usr/bin/python3 -m venv --system-site-packages .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check \
    "ruff==0.8.6" "vermin==1.9.2"
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
# A real Python 3.7 (UOS 20's system Python), where the machine has one
# (pyenv here), runs the pure-Python tests as a check beyond vermin.
py37=""
for candidate in "$HOME"/.pyenv/versions/3.7*/bin/python3.7 /usr/bin/python3.7; do
    if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 7)' 2>/dev/null; then
        py37=$candidate
        break
    fi
done
if [ -n "$py37" ] && [ ! -x .venv37/bin/python ]; then
    "$py37" -m venv .venv37
    .venv37/bin/python -m pip install -q --disable-pip-version-check pytest structlog
fi
touch .venv/.setup-done
