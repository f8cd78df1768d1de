"""csad_jax: CSAD (BMVC 2024) in JAX/Flax NNX.

Unsupervised component segmentation for logical anomaly detection on MVTec LOCO
AD-style data. The package never imports torch; see docs/architecture.md for the
map from the paper's concepts to modules.
"""

__version__ = "0.1.0"
