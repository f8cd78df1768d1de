"""Run a test script in a fresh Python process (helper modules importable)."""

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent


def run_script(
    code: str, *args: str, devices: int | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """Runs `python -c code args...` with tests/ and the repo on PYTHONPATH.

    Args:
      code: the script.
      args: its command-line arguments (sys.argv[1:]).
      devices: if set, the number of forced CPU host devices (data-parallel
        tests), with JAX restricted to the CPU.
      timeout: seconds before the run is killed.

    Returns:
      the completed process (text stdout/stderr captured, not checked).
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(TESTS.parent), *sys.path])
    if devices is not None:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
        env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
