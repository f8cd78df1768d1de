"""PyTorch restatements of official CSAD graphs, for parity tests only.

Written from docs (method-spec.md), not copied from the official repository.
Nothing in csad_jax imports this package.
"""
