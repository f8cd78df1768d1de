"""label_gen: semantic pseudo-label generation for CSAD (the PyTorch side).

Foundation-model backend (Grounded-SAM, SAM) and an offline backend that needs no
foundation weights. This package may import torch; csad_jax never does.
"""
