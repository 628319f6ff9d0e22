"""Fixtures for end-to-end transactions through the ``patchd`` executable."""

import pytest

from tests.lab.endpoint import Lab


@pytest.fixture(scope="session", params=["deb", "rpm"])
def lab(request, lab_dir, _lab_leak_guard):
    """A Lab of each family with a baseline endpoint: every test using it
    runs on apt/dpkg and on dnf/rpm. Depends on the leak guard so the guard
    checks for leaks after the lab's own clean-up."""
    with Lab(lab_dir / ("endpoint-lab-" + request.param), family=request.param) as the_lab:
        yield the_lab


@pytest.fixture
def endpoint(lab):
    """A fresh endpoint cloned from the baseline (BASELINE packages installed)."""
    ep = lab.endpoint()
    try:
        yield ep
    finally:
        lab.discard(ep)
