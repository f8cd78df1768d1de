"""Forward time per image of the frozen backbones: JAX (jit) versus PyTorch, CPU.

Times the trunk up to layer4 (stride 32, no classifier head) of WideResNet-50-2
and EfficientNet-Lite0 at 256x256, batch 1 and 8, after warm-up, and prints the
median and interquartile range of the per-image time plus the JAX / PyTorch ratio.
Weights are random (timing does not depend on them). The PyTorch references are
torchvision's wide_resnet50_2 and timm's tf_efficientnet_lite0 (TF 'SAME'
padding, as our default Lite numerics).

    .venv/bin/python experiments/bench_backbones.py [--runs 7] [--batches 1 8]
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
import torch
from flax import nnx

from csad_jax.backbones import load_backbone


def _stats(seconds: list[float], batch: int) -> tuple[float, float, float]:
    per_image = np.asarray(seconds) * 1000.0 / batch
    q25, q50, q75 = np.percentile(per_image, [25, 50, 75])
    return q50, q25, q75


def time_jax(model, images: np.ndarray, runs: int, warmup: int) -> list[float]:
    """Wall times of a jitted forward to layer4 (block_until_ready)."""
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x, stages=("layer4",)))
    x = jax.device_put(images)
    for _ in range(warmup):
        jax.block_until_ready(forward(state, x))
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        jax.block_until_ready(forward(state, x))
        times.append(time.perf_counter() - start)
    return times


def time_torch(trunk, images: np.ndarray, runs: int, warmup: int) -> list[float]:
    """Wall times of a PyTorch eval forward under no_grad."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    times = []
    with torch.inference_mode():
        for i in range(warmup + runs):
            start = time.perf_counter()
            trunk(x)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return times


def torch_trunks() -> dict:
    """PyTorch modules computing the same trunk (stem .. layer4 / last block)."""
    import timm
    import torchvision

    wrn = torchvision.models.wide_resnet50_2().eval()
    lite = timm.create_model("tf_efficientnet_lite0").eval()
    return {
        "wide_resnet50_2": torch.nn.Sequential(*list(wrn.children())[:-2]),
        "efficientnet_lite0": torch.nn.Sequential(
            lite.conv_stem, lite.bn1, lite.blocks
        ),
    }


def main() -> None:
    """Runs the benchmark and prints a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    trunks = torch_trunks()
    print(
        f"jax {jax.__version__} ({jax.devices()[0].platform}), torch"
        f" {torch.__version__} ({torch.get_num_threads()} threads),"
        f" {args.size}x{args.size}, {args.runs} runs after {args.warmup} warm-up"
    )
    print(
        "| backbone | batch | JAX ms/img median [IQR] | PyTorch ms/img median [IQR]"
        " | JAX/PyTorch |"
    )
    print("|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for name, trunk in trunks.items():
        model = load_backbone(name, random_init=True)
        for batch in args.batches:
            images = rng.normal(size=(batch, args.size, args.size, 3))
            images = images.astype(np.float32)
            j = _stats(time_jax(model, images, args.runs, args.warmup), batch)
            t = _stats(time_torch(trunk, images, args.runs, args.warmup), batch)
            print(
                f"| {name} | {batch} | {j[0]:.0f} [{j[1]:.0f}-{j[2]:.0f}] |"
                f" {t[0]:.0f} [{t[1]:.0f}-{t[2]:.0f}] | {j[0] / t[0]:.2f} |"
            )


if __name__ == "__main__":
    main()
