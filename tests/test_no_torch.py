"""The JAX core must never import torch, directly or through a dependency."""

import pkgutil
import subprocess
import sys

import csad_jax


def _all_modules() -> list[str]:
    names = ["csad_jax"]
    for info in pkgutil.walk_packages(csad_jax.__path__, prefix="csad_jax."):
        names.append(info.name)
    return names


def test_importing_every_csad_jax_module_leaves_torch_unimported():
    modules = _all_modules()
    assert "csad_jax.cli" in modules
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules"
        " if m == 'torch' or m.startswith('torch.'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "", f"torch modules imported: {out.stdout.strip()}"
