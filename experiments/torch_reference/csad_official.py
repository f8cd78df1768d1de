"""PyTorch restatement of the official fused CSAD inference model.

Restated from method-spec.md §3.2, §4, §5.1-5.3, §6.3, §8 and §10 (no official
code was consulted). `CSADOfficial(num_classes=K, dim=512)` has the parameter and
buffer names and shapes of the official exported state dict, so an official
checkpoint loads with `strict=True`. `forward` returns the fused score [B];
`intermediates` returns every module's output for module-by-module parity
tests against csad_jax. Tensors are NCHW, as in PyTorch.

The encoder is torchvision's wide_resnet50_2 without layer4/avgpool/fc; its
state-dict names equal timm's `features_only` layout (conv1, bn1, layer1..3).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import wide_resnet50_2

BN_EPS = 1e-5
BN_MOMENTUM = 0.999  # official decoder BatchNorm (irrelevant in eval mode)
IMAGE_SIZE = 256
FEAT_SIZE = 64
MAP_SCALE = 0.1

# Top-level buffers of the fused model, in state-dict order (scalars unless
# listed in _VECTOR_BUFFERS).
TOP_BUFFERS = (
    "teacher_mean",
    "teacher_std",
    "q_st_start",
    "q_st_end",
    "q_ae_start",
    "q_ae_end",
    "lgst_mean",
    "lgst_std",
    "patch_hist_mean",
    "patch_hist_std",
)
_VECTOR_BUFFERS = ("teacher_mean", "teacher_std")
DETECTOR_SCALARS = (
    "hist_val_mean",
    "hist_val_std",
    "patch_hist_val_mean",
    "patch_hist_val_std",
)


def resize(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize, align_corners=False, no antialiasing (NCHW)."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class WideResNetEncoder(nn.Module):
    """Frozen WRN50-2 stem + layer1..layer3 returning the three stage outputs."""

    def __init__(self):
        super().__init__()
        net = wide_resnet50_2(weights=None)
        self.conv1, self.bn1 = net.conv1, net.bn1
        self.relu, self.maxpool = net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[B,3,H,W] -> [layer1 [B,256,H/4,W/4], layer2 (/8), layer3 (/16)]."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        l1 = self.layer1(x)
        l2 = self.layer2(l1)
        return [l1, l2, self.layer3(l2)]


class ConvBNReLU(nn.Module):
    """Bias-free conv -> BatchNorm2d (eps 1e-5, momentum 0.999) -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, padding=0, dilation=1):
        super().__init__()
        self.conv = nn.Conv2d(
            cin, cout, kernel, padding=padding, dilation=dilation, bias=False
        )
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B,cin,H,W] -> [B,cout,H',W']."""
        return F.relu(self.bn(self.conv(x)))


class ImagePool(nn.Module):
    """ASPP image pooling: global average -> 1x1 CBR -> bilinear upsample."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = ConvBNReLU(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B,cin,h,w] -> [B,cout,h,w]."""
        pooled = self.conv(F.adaptive_avg_pool2d(x, 1))
        return resize(pooled, x.shape[-2:])


class ASPP(nn.Module):
    """c0 (1x1), c1..c3 (3x3, dilation 6/12/18), image pool; concatenated."""

    def __init__(self, cin: int = 1024, cout: int = 256, rates=(6, 12, 18)):
        super().__init__()
        self.stages = nn.ModuleDict({"c0": ConvBNReLU(cin, cout, 1)})
        for i, rate in enumerate(rates):
            self.stages[f"c{i + 1}"] = ConvBNReLU(cin, cout, 3, rate, rate)
        self.stages["imagepool"] = ImagePool(cin, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B,cin,h,w] -> [B,5*cout,h,w] in order c0, c1, c2, c3, imagepool."""
        return torch.cat([stage(x) for stage in self.stages.values()], dim=1)


class SegmentorHead(nn.Module):
    """`fc2`: two 3x3 CBR then the 1x1 classifier with bias."""

    def __init__(self, cin: int, num_classes: int):
        super().__init__()
        self.conv1 = ConvBNReLU(cin, 256, 3, 1)
        self.conv2 = ConvBNReLU(256, 256, 3, 1)
        self.conv3 = nn.Conv2d(256, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B,304,h,w] -> [B,K,h,w] logits."""
        return self.conv3(self.conv2(self.conv1(x)))


class Segmentor(nn.Module):
    """DeepLabV3+-style decoder on layer1 and layer3 (spec §3.2)."""

    def __init__(self, num_classes: int, in_size: int = IMAGE_SIZE):
        super().__init__()
        self.in_size = in_size
        self.aspp = ASPP(1024, 256)
        self.reduce = ConvBNReLU(256, 48, 1)
        self.fc1 = ConvBNReLU(1280, 256, 1)
        self.fc2 = SegmentorHead(256 + 48, num_classes)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Encoder stages -> logits [B,K,in_size,in_size]."""
        low = self.reduce(feats[0])
        high = resize(feats[2], (self.in_size // 16,) * 2)
        x = resize(self.fc1(self.aspp(high)), low.shape[-2:])
        x = self.fc2(torch.cat([x, low], dim=1))
        return resize(x, (self.in_size, self.in_size))


def mahalanobis(x: torch.Tensor, mean: torch.Tensor, invcov: torch.Tensor):
    """sqrt(δᵀ Σ⁺ δ) per sample, δ = x - mean; x [B,D,1], mean [D,1] -> [B]."""
    delta = x - mean
    quad = delta.transpose(1, 2) @ invcov @ delta
    return quad.reshape(-1).sqrt()


class PatchHistogramDetector(nn.Module):
    """Class (whole map) and 2x2 patch histograms scored by Mahalanobis (§8.3)."""

    def __init__(self, num_classes: int):
        super().__init__()
        k = num_classes
        self.register_buffer("hist_mean", torch.zeros(k, 1))
        self.register_buffer("hist_invcov", torch.zeros(k, k))
        self.register_buffer("patch_hist_mean", torch.zeros(4 * k, 1))
        self.register_buffer("patch_hist_invcov", torch.zeros(4 * k, 4 * k))
        for name in DETECTOR_SCALARS:
            init = 1.0 if name.endswith("std") else 0.0
            self.register_buffer(name, torch.tensor(init))

    @staticmethod
    def histograms(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [B,K,H,W] -> (class hist [B,K,1], patch hist [B,4K,1]).

        One-hot of the argmax over ALL K channels (slot 0 = background
        fraction); quadrants in order TL, BL, TR, BR.
        """
        k, h, w = logits.shape[1:]
        onehot = F.one_hot(logits.argmax(dim=1), k).permute(0, 3, 1, 2).float()
        hist = onehot.mean(dim=(2, 3)).unsqueeze(-1)
        top, bottom = slice(0, h // 2), slice(h // 2, h)
        left, right = slice(0, w // 2), slice(w // 2, w)
        quads = [(top, left), (bottom, left), (top, right), (bottom, right)]
        parts = [onehot[:, :, r, c].mean(dim=(2, 3)) for r, c in quads]
        return hist, torch.cat(parts, dim=1).unsqueeze(-1)

    def forward(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Histograms, distances d_256, d_128 [B] and the branch score PH [B]."""
        hist, patch = self.histograms(logits)
        d_hist = mahalanobis(hist, self.hist_mean, self.hist_invcov)
        d_patch = mahalanobis(patch, self.patch_hist_mean, self.patch_hist_invcov)
        z_hist = (d_hist - self.hist_val_mean) / self.hist_val_std
        z_patch = (d_patch - self.patch_hist_val_mean) / self.patch_hist_val_std
        return {
            "class_hist": hist,
            "patch_hist": patch,
            "hist_distance": d_hist,
            "patch_hist_distance": d_patch,
            "patch_hist_score": z_hist + z_patch,
        }


class TeacherHead(nn.Module):
    """layer2, layer3 -> bilinear to 64 -> concat -> avgpool 3 s1 p1 -> 1x1 proj."""

    def __init__(self, in_dim: int = 1536, out_dim: int = 512, feat_size=FEAT_SIZE):
        super().__init__()
        self.feat_size = feat_size
        self.proj = nn.Conv2d(in_dim, out_dim, 1)

    def forward(self, layer2: torch.Tensor, layer3: torch.Tensor) -> torch.Tensor:
        """-> [B,out_dim,64,64], not normalised."""
        size = (self.feat_size, self.feat_size)
        x = torch.cat([resize(layer2, size), resize(layer3, size)], dim=1)
        return self.proj(F.avg_pool2d(x, 3, stride=1, padding=1))


class LocalStudent(nn.Module):
    """PDN-style local student, padding=True, heads conv_st and conv_ae (§5.2)."""

    def __init__(self, out_dim: int = 512, feat_size: int = FEAT_SIZE):
        super().__init__()
        self.feat_size = feat_size
        self.conv1 = nn.Conv2d(3, 256, 4, padding=3)
        self.conv2 = nn.Conv2d(256, 512, 4, padding=3)
        self.conv3 = nn.Conv2d(512, 512, 1)
        self.conv4 = nn.Conv2d(512, 512, 3, padding=1)
        self.conv5 = nn.Conv2d(512, 512, 4)
        self.conv_st = nn.Conv2d(512, out_dim, 1)
        self.conv_ae = nn.Conv2d(512, out_dim, 1)
        self.pool = nn.AvgPool2d(2, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B,3,256,256] -> (s_st, s_ae), each [B,out_dim,64,64]."""
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = F.relu(self.conv3(x))
        x = F.relu(self.conv4(x))
        x = F.relu(self.conv5(x))
        x = resize(x, (self.feat_size, self.feat_size))
        return self.conv_st(x), self.conv_ae(x)


class AutoEncoder(nn.Module):
    """Global student `AutoEncoder(out_size 64, out_dim 512, base_dim 64)` (§5.3)."""

    DECODER_SIZES = (3, 8, 15, 32, 63, 127)

    def __init__(self, out_dim: int = 512, base_dim: int = 64, out_size=FEAT_SIZE):
        super().__init__()
        self.out_size = out_size
        half, c = base_dim // 2, base_dim
        self.enconv1 = nn.Conv2d(3, half, 4, stride=2, padding=1)
        self.enconv2 = nn.Conv2d(half, half, 4, stride=2, padding=1)
        self.enconv3 = nn.Conv2d(half, c, 4, stride=2, padding=1)
        self.enconv4 = nn.Conv2d(c, c, 4, stride=2, padding=1)
        self.enconv5 = nn.Conv2d(c, c, 4, stride=2, padding=1)
        self.enconv6 = nn.Conv2d(c, c, 8)
        for i in range(1, 7):
            setattr(self, f"deconv{i}", nn.Conv2d(c, c, 4, padding=2))
        self.deconv7 = nn.Conv2d(c, c, 3, padding=1)
        self.deconv8 = nn.Conv2d(c, out_dim, 3, padding=1)
        self.dropouts = nn.ModuleList(nn.Dropout(0.2) for _ in range(6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B,3,256,256] -> [B,out_dim,64,64] (dropout active only in train())."""
        for i in range(1, 6):
            x = F.relu(getattr(self, f"enconv{i}")(x))
        x = self.enconv6(x)
        for i, size in enumerate(self.DECODER_SIZES):
            x = resize(x, (size, size))
            x = self.dropouts[i](F.relu(getattr(self, f"deconv{i + 1}")(x)))
        x = resize(x, (self.out_size, self.out_size))
        return self.deconv8(F.relu(self.deconv7(x)))


class CSADOfficial(nn.Module):
    """The fused model `CSAD_ONNX(dim, num_classes=K)` (spec §8), eval only.

    Args:
      num_classes: K = N_cls + 1 segmentor outputs (background = channel 0).
      dim: teacher / student channels (official 512).
    """

    def __init__(self, num_classes: int = 5, dim: int = 512):
        super().__init__()
        for name in TOP_BUFFERS:
            shape = (1, dim, 1, 1) if name in _VECTOR_BUFFERS else ()
            init = 1.0 if name.endswith(("std", "end")) else 0.0
            self.register_buffer(name, torch.full(shape, init))
        self.encoder = WideResNetEncoder()
        self.teacher = TeacherHead(1536, dim)
        self.local_st = LocalStudent(dim)
        self.autoencoder = AutoEncoder(dim)
        self.segmentor = Segmentor(num_classes)
        self.patch_hist_detector = PatchHistogramDetector(num_classes)
        self.eval()

    def teacher_inputs(self, l1, l2, l3) -> tuple[torch.Tensor, torch.Tensor]:
        """The two encoder stages the teacher projects: layer2, layer3."""
        return l2, l3

    @torch.no_grad()
    def intermediates(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every module's output for ImageNet-normalised images x [B,3,256,256].

        Returns:
          layer1 [B,256,64,64], layer2 [B,512,32,32], layer3 [B,1024,16,16];
          logits [B,K,256,256]; class_hist [B,K,1], patch_hist [B,4K,1],
          hist_distance, patch_hist_distance, patch_hist_score [B];
          teacher_raw, teacher (normalised), student_st, student_ae,
          autoencoder [B,512,64,64]; map_st, map_ae (raw), map_st_norm,
          map_ae_norm, lgst_map [B,64,64]; lgst_score, score [B].
        """
        l1, l2, l3 = self.encoder(x)
        out = {"layer1": l1, "layer2": l2, "layer3": l3}
        out["logits"] = self.segmentor([l1, l2, l3])
        out.update(self.patch_hist_detector(out["logits"]))
        out["teacher_raw"] = self.teacher(*self.teacher_inputs(l1, l2, l3))
        t = (out["teacher_raw"] - self.teacher_mean) / self.teacher_std
        s_st, s_ae = self.local_st(x)
        a = self.autoencoder(x)
        out.update(teacher=t, student_st=s_st, student_ae=s_ae, autoencoder=a)
        out["map_st"] = ((t - s_st) ** 2).mean(dim=1)
        out["map_ae"] = ((s_ae - a) ** 2).mean(dim=1)
        st_range = self.q_st_end - self.q_st_start
        ae_range = self.q_ae_end - self.q_ae_start
        out["map_st_norm"] = MAP_SCALE * (out["map_st"] - self.q_st_start) / st_range
        out["map_ae_norm"] = MAP_SCALE * (out["map_ae"] - self.q_ae_start) / ae_range
        out["lgst_map"] = out["map_st_norm"] + out["map_ae_norm"]
        out["lgst_score"] = out["lgst_map"].amax(dim=(1, 2))
        z_lgst = (out["lgst_score"] - self.lgst_mean) / self.lgst_std
        z_ph = (out["patch_hist_score"] - self.patch_hist_mean) / self.patch_hist_std
        out["score"] = z_lgst + z_ph
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fused anomaly score [B] of ImageNet-normalised images [B,3,256,256]."""
        return self.intermediates(x)["score"]


def plausible_tensor(name: str, shape, generator: torch.Generator) -> torch.Tensor:
    """A random tensor for state-dict entry `name` that keeps the model finite.

    Convolution weights are PyTorch-default uniform; BatchNorm variances,
    stds and quantile ranges are positive; inverse covariances are symmetric
    positive semi-definite; `num_batches_tracked` is an int64 count.
    """
    shape = tuple(shape)
    leaf = name.rsplit(".", 1)[-1]

    def uniform(low, high):
        return low + (high - low) * torch.rand(shape, generator=generator)

    if leaf == "num_batches_tracked":
        return torch.randint(0, 1000, shape, generator=generator)
    if leaf.endswith("invcov"):
        a = torch.randn(shape, generator=generator) / math.sqrt(shape[0])
        return a @ a.T
    if len(shape) == 4 and leaf == "weight":
        bound = 1.0 / math.sqrt(shape[1] * shape[2] * shape[3])
        return uniform(-bound, bound)
    if leaf in ("running_var", "teacher_std") or leaf.endswith("_std"):
        return uniform(0.5, 1.5)
    if leaf.endswith("_end"):
        return uniform(1.0, 2.0)
    if leaf.endswith("_start"):
        return uniform(0.0, 0.5)
    if leaf == "weight":  # BatchNorm scale
        return uniform(0.5, 1.5)
    return 0.1 * torch.randn(shape, generator=generator)


def random_state_dict(shapes: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Plausible random tensors (see `plausible_tensor`) for name -> shape."""
    generator = torch.Generator().manual_seed(seed)
    return {k: plausible_tensor(k, v, generator) for k, v in shapes.items()}


def state_dict_shapes(model: nn.Module) -> dict[str, list[int]]:
    """name -> shape list of a module's state dict, in state-dict order."""
    return {k: list(v.shape) for k, v in model.state_dict().items()}
