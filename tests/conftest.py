"""Fixtures shared by the end-to-end tests of the fused model (tests/csad_tiny.py)."""

import pytest
from csad_tiny import fast_compile, fitted_run


@pytest.fixture(scope="module")
def fast_xla():
    """Most XLA optimisations off for one module (compiles several times faster)."""
    with fast_compile():
        yield


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, fast_xla):
    """The tiny dataset and the run fitted once per session (csad_tiny)."""
    return fitted_run(tmp_path_factory)
