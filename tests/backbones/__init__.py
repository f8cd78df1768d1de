"""Tests of csad_jax.backbones (models, conversion, weight discovery)."""
