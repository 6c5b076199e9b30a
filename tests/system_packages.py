"""Debian programs some tests need (chromium, promtool), installed on first use."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def install_debian_package(program: str, package: str) -> str:
    """The path of ``program``, installing its Debian package first if it is missing."""
    found = shutil.which(program)
    if found:
        return found
    if os.geteuid() != 0:
        pytest.fail(f"{program} is missing and installing {package} needs root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
        check=True,
        env=env,
        timeout=900,
    )
    found = shutil.which(program)
    assert found, f"{package} did not provide {program}"
    return found
