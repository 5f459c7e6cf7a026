"""The fault tests' Ray is their own, apart from any other on this machine: Ray's temp folder
(RAY_TMPDIR) is a private one, so a local `ray.init()` (a driver's, this suite's) starts a new
Ray instead of joining the cluster the last `ray start` here recorded in
/tmp/ray/ray_current_cluster (another suite's two-node test, run beside this one)."""

from __future__ import annotations

import shutil
import tempfile

import pytest


@pytest.fixture(scope="session", autouse=True)
def private_ray_tmpdir():
    path = tempfile.mkdtemp(prefix="gsr", dir="/tmp")  # short: Ray's socket paths are capped at 107 bytes
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_TMPDIR", path)
        yield path
    shutil.rmtree(path, ignore_errors=True)
