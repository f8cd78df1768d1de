"""Reading PyTorch checkpoint files: the only place in the project that calls
torch.load.

csad_jax imports this module at call time (importlib) only when a .pth/.bin file
must be converted; the converted parameters are cached as .npz afterwards.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from csad_jax.errors import WeightsError

# Containers some training scripts wrap a state dict in.
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")


def _first_line(err: BaseException) -> str:
    """The first line of an error, or a plain reason when torch gives none.

    Non-checkpoint bytes make torch's unpickler fail with bare KeyErrors such
    as `101` (the byte 'e' read as an opcode) or an empty EOFError.
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip().strip("'")
    first = text.splitlines()[0] if text else ""
    if isinstance(err, (KeyError, EOFError)) or not any(c.isalpha() for c in first):
        return "not a file written by torch.save, or truncated"
    if "weights_only" in text or "Weights only" in text:
        return "it holds pickled Python objects, not only tensors; refused unread"
    return first[:200]


def _check_magic(path: Path) -> None:
    """WeightsError unless the file starts like a torch.save file.

    torch.save writes a zip archive (`PK\\x03\\x04`) or, in the legacy format,
    a pickle (protocol 2+ starts with `\\x80`); anything else (text, other
    binaries) is refused before torch reads it.
    """
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such file") from None
    except OSError as err:
        raise WeightsError(f"{path}: cannot read ({err.strerror or err})") from None
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise WeightsError(
            f"{path}: not a readable PyTorch state dict (not a file written by "
            "torch.save, or truncated)"
        )


def _unwrap(obj, path: Path) -> dict:
    if isinstance(obj, dict) and not any(torch.is_tensor(v) for v in obj.values()):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), dict):
                return obj[key]
    if not isinstance(obj, dict):
        raise WeightsError(
            f"{path}: holds a {type(obj).__name__}, not a state dict; save"
            " model.state_dict() instead of the whole model"
        )
    return obj


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Reads a .pth/.bin state dict with `weights_only=True` into numpy arrays.

    Args:
      path: a file written by `torch.save(state_dict)` (zip or legacy format),
        possibly wrapped in {"state_dict": ...}.

    Returns:
      name -> numpy array (bfloat16 tensors become float32), in file order.

    Raises:
      WeightsError (one line, naming the file) if the file is missing, truncated,
      corrupt, a pickled module, or holds non-tensor values.
    """
    path = Path(path)
    _check_magic(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise WeightsError(f"{path}: no such file") from err
    except Exception as err:  # torch raises many types for corrupt files
        raise WeightsError(
            f"{path}: not a readable PyTorch state dict ({_first_line(err)})"
        ) from err
    state = _unwrap(obj, path)
    out = {}
    for name, value in state.items():
        if not torch.is_tensor(value):
            raise WeightsError(f"{path}: entry {name!r} is not a tensor")
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            value = value.float()
        out[str(name)] = value.numpy()
    return out
