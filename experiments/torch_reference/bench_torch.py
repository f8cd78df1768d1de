"""PyTorch side of `csad bench`: the fused graph as eager and torch.compile runners.

`csad_jax.bench` never imports torch; it loads this module with importlib when
torch and a source checkout are available, describes the architecture as a
plain dict (`spec`) and times the runners built here interleaved with its own
JAX runs on the same inputs.

Architectures: the official widths on WideResNet-50-2 are the restatement
`csad_official.CSADOfficial` itself. Any other spec (the `fast` preset:
EfficientNet-Lite0, narrow decoder and students) is `FusedTorch`, the same
graph assembled from csad_official's building blocks with configurable widths
and timm's `tf_efficientnet_lite*` trunk (TF 'SAME' padding, as our default
Lite numerics). Weights are random unless a state dict is given; run time
does not depend on them.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from experiments.torch_reference import csad_official as co

SUPPORTED_BACKBONES = (
    "wide_resnet50_2",
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
)
OFFICIAL_DECODER = {
    "aspp_channels": 256,
    "low_channels": 48,
    "head_channels": 256,
    "aspp_rates": [6, 12, 18],
}


# The teacher stage pairs the restatement supports, mapped to positions in the
# encoder outputs layer1, layer2, layer3: the paper pair layer2 + layer3 and
# the fast preset's pair layer1 + layer2.
TEACHER_PAIRS = {("layer2", "layer3"): (1, 2), ("layer1", "layer2"): (0, 1)}


class UnsupportedSpec(ValueError):
    """The requested architecture has no PyTorch restatement here."""


# ---------------------------------------------------------------------------
# Configurable-width fused graph
# ---------------------------------------------------------------------------


class LiteEncoder(nn.Module):
    """timm tf_efficientnet_lite* trunk returning layer1..layer3 (strides 4-16)."""

    def __init__(self, name: str):
        super().__init__()
        import timm

        self.trunk = timm.create_model(
            f"tf_{name}", pretrained=False, features_only=True, out_indices=(1, 2, 3)
        )
        self.channels = self.trunk.feature_info.channels()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[B,3,H,W] -> [layer1, layer2, layer3]."""
        return self.trunk(x)


class WideSegmentor(nn.Module):
    """`csad_official.Segmentor` with configurable widths (DeepLabV3+ decoder)."""

    def __init__(self, low_in, high_in, num_classes, decoder: dict, in_size=256):
        super().__init__()
        aspp, low, head = (
            decoder[k] for k in ("aspp_channels", "low_channels", "head_channels")
        )
        rates = tuple(decoder["aspp_rates"])
        self.in_size = in_size
        self.aspp = co.ASPP(high_in, aspp, rates)
        self.reduce = co.ConvBNReLU(low_in, low, 1)
        self.fc1 = co.ConvBNReLU((2 + len(rates)) * aspp, aspp, 1)
        self.conv1 = co.ConvBNReLU(aspp + low, head, 3, 1)
        self.conv2 = co.ConvBNReLU(head, head, 3, 1)
        self.classifier = nn.Conv2d(head, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Encoder stages -> logits [B,K,in_size,in_size]."""
        low = self.reduce(feats[0])
        high = co.resize(feats[2], (self.in_size // 16,) * 2)
        x = co.resize(self.fc1(self.aspp(high)), low.shape[-2:])
        x = self.conv2(self.conv1(torch.cat([x, low], dim=1)))
        return co.resize(self.classifier(x), (self.in_size, self.in_size))


class WideLocalStudent(nn.Module):
    """`csad_official.LocalStudent` (padding=True) with widths (w1, w2)."""

    def __init__(self, out_dim: int, widths, feat_size: int = co.FEAT_SIZE):
        super().__init__()
        w1, w2 = widths
        self.feat_size = feat_size
        self.conv1 = nn.Conv2d(3, w1, 4, padding=3)
        self.conv2 = nn.Conv2d(w1, w2, 4, padding=3)
        self.conv3 = nn.Conv2d(w2, w2, 1)
        self.conv4 = nn.Conv2d(w2, w2, 3, padding=1)
        self.conv5 = nn.Conv2d(w2, w2, 4)
        self.conv_st = nn.Conv2d(w2, out_dim, 1)
        self.conv_ae = nn.Conv2d(w2, out_dim, 1)
        self.pool = nn.AvgPool2d(2, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B,3,256,256] -> (s_st, s_ae), each [B,out_dim,64,64]."""
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = F.relu(self.conv4(F.relu(self.conv3(x))))
        x = co.resize(F.relu(self.conv5(x)), (self.feat_size, self.feat_size))
        return self.conv_st(x), self.conv_ae(x)


class SizedAutoEncoder(co.AutoEncoder):
    """`csad_official.AutoEncoder` for input side S (a multiple of 64, >= 128).

    Bottleneck kernel S / 32 and resize targets f/16 - 1, f/8, f/4 - 1, f/2,
    f - 1, 2f - 1, then f = S / 4 (for S = 256 exactly the official ones).
    """

    def __init__(self, out_dim: int, base_dim: int, image_size: int):
        f = image_size // 4
        super().__init__(out_dim, base_dim, out_size=f)
        self.enconv6 = nn.Conv2d(base_dim, base_dim, image_size // 32)
        self.DECODER_SIZES = (f // 16 - 1, f // 8, f // 4 - 1, f // 2, f - 1, 2 * f - 1)


class FusedTorch(co.CSADOfficial):
    """The fused graph of `CSADOfficial` with configurable backbone and widths.

    Inherits `intermediates` / `forward`; only the modules differ.
    """

    def __init__(self, spec: dict):
        nn.Module.__init__(self)
        k, dim = int(spec["num_classes"]), int(spec["out_dim"])
        for name in co.TOP_BUFFERS:
            shape = (1, dim, 1, 1) if name.startswith("teacher_") else ()
            init = 1.0 if name.endswith(("std", "end")) else 0.0
            self.register_buffer(name, torch.full(shape, init))
        if spec["backbone"] == "wide_resnet50_2":
            self.encoder = co.WideResNetEncoder()
            channels = [256, 512, 1024]
        else:
            self.encoder = LiteEncoder(spec["backbone"])
            channels = self.encoder.channels
        size = int(spec["image_size"])
        self.segmentor = WideSegmentor(
            channels[0], channels[2], k, spec["decoder"], size
        )
        self.patch_hist_detector = co.PatchHistogramDetector(k)
        self.teacher_pair = TEACHER_PAIRS[tuple(spec["teacher_stages"])]
        in_dim = sum(channels[i] for i in self.teacher_pair)
        self.teacher = co.TeacherHead(in_dim, dim, size // 4)
        self.local_st = WideLocalStudent(dim, spec["student_widths"], size // 4)
        base = int(spec["global_base_dim"])
        self.autoencoder = SizedAutoEncoder(dim, base, size)
        self.eval()

    def teacher_inputs(self, l1, l2, l3) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder stages named by the spec's teacher_stages."""
        feats = (l1, l2, l3)
        return tuple(feats[i] for i in self.teacher_pair)


def check_spec(spec: dict) -> None:
    """Raises UnsupportedSpec unless the graph can be restated here."""
    problems = []
    if spec["backbone"] not in SUPPORTED_BACKBONES:
        problems.append(f"backbone {spec['backbone']}")
    size = int(spec["image_size"])
    if size < 128 or size % 64:
        problems.append(f"image size {size} (needs a multiple of 64, >= 128)")
    if tuple(spec["segmentor_stages"]) != ("layer1", "layer3"):
        problems.append(f"segmentor stages {spec['segmentor_stages']}")
    if tuple(spec["teacher_stages"]) not in TEACHER_PAIRS:
        problems.append(f"teacher stages {spec['teacher_stages']}")
    if problems:
        raise UnsupportedSpec("no PyTorch restatement for " + ", ".join(problems))


def is_official(spec: dict) -> bool:
    """True when the spec is the official architecture (CSADOfficial)."""
    decoder = {
        k: list(v) if k == "aspp_rates" else v
        for k, v in spec["decoder"].items()
        if k in OFFICIAL_DECODER
    }
    return (
        spec["backbone"] == "wide_resnet50_2"
        and int(spec["image_size"]) == co.IMAGE_SIZE
        and decoder == OFFICIAL_DECODER
        and list(spec["student_widths"]) == [256, 512]
        and int(spec["global_base_dim"]) == 64
    )


def build_model(spec: dict, state_dict: dict | None = None) -> nn.Module:
    """The fused PyTorch model of `spec` in eval mode (random or given weights).

    Args:
      spec: backbone, image_size, num_classes (K), segmentor_stages,
        teacher_stages, decoder widths, out_dim, student_widths,
        global_base_dim (as `csad_jax.bench.torch_spec` writes it).
      state_dict: official-layout NumPy arrays (official architecture only).
    """
    check_spec(spec)
    torch.manual_seed(0)
    if is_official(spec):
        model = co.CSADOfficial(int(spec["num_classes"]), int(spec["out_dim"]))
    else:
        model = FusedTorch(spec)
    if state_dict is not None:
        tensors = {k: torch.as_tensor(np.asarray(v)) for k, v in state_dict.items()}
        model.load_state_dict(tensors, strict=True)
    return model.eval()


def description(spec: dict) -> str:
    """One line naming the PyTorch model built for `spec`."""
    if is_official(spec):
        return "experiments.torch_reference.csad_official.CSADOfficial"
    return f"bench_torch.FusedTorch (timm tf_{spec['backbone']}, same widths)"


# ---------------------------------------------------------------------------
# Runners
# ---------------------------------------------------------------------------


def device_for(backend: str) -> str:
    """ "cuda" when JAX runs on a GPU and torch sees one, else "cpu"."""
    return "cuda" if backend == "gpu" and torch.cuda.is_available() else "cpu"


class Runner:
    """One synchronised forward of a fused model on fixed inputs.

    Args:
      model: eval-mode fused model (images [B,3,S,S] -> scores [B]).
      mode: "eager" or "compile" (torch.compile, default backend).
      device: "cpu" or "cuda".
      threads: intra-op CPU threads set before every call (None: as found).
    """

    def __init__(self, model: nn.Module, mode: str, device: str, threads=None):
        if mode not in ("eager", "compile"):
            raise ValueError(f"unknown torch mode {mode!r}")
        self.mode, self.device = mode, device
        self.threads = threads or torch.get_num_threads()
        self.model = model.to(device)
        self.forward = torch.compile(self.model) if mode == "compile" else self.model
        self.inputs = None

    def prepare(self, images: np.ndarray) -> None:
        """Moves NHWC float32 images to the device as NCHW (outside timing)."""
        x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
        self.inputs = x.to(self.device)

    def __call__(self) -> torch.Tensor:
        """Runs the model on the prepared inputs and waits for it."""
        torch.set_num_threads(self.threads)
        with torch.inference_mode():
            out = self.forward(self.inputs)
        if self.device == "cuda":
            torch.cuda.synchronize()
        return out

    def scores(self) -> np.ndarray:
        """The fused scores [B] of the prepared inputs."""
        return self().detach().float().cpu().numpy()


def make_runners(spec, modes, backend: str, state_dict=None, threads=(None,)):
    """name -> Runner, or name -> error message when it cannot be built.

    One model is shared by all runners (torch.compile wraps it). Eager gets
    one runner per entry of `threads` (named "eager t<n>" when several are
    asked); compile runs with the threads found at start (it compiles once).
    """
    model = build_model(spec, state_dict)
    device = device_for(backend)
    default = torch.get_num_threads()
    plan = []
    for mode in modes:
        counts = threads if mode == "eager" else (None,)
        for n in counts:
            name = mode if len(threads) == 1 else f"{mode} t{n or default}"
            plan.append((name, mode, n))
    out: dict = {}
    for name, mode, n in plan:
        try:
            out[name] = Runner(model, mode, device, n)
        except Exception as err:  # noqa: BLE001 - reported, never fatal
            out[name] = f"{type(err).__name__}: {err}".splitlines()[0]
    return out


def environment() -> dict:
    """torch version, threads, device and peak device memory (CUDA only)."""
    info = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["cuda_peak_bytes"] = int(torch.cuda.max_memory_allocated())
    return info
