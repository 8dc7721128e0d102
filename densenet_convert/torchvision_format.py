"""torchvision and timm DenseNet state_dicts: the same tensors in the same (canonical) layout.

Only the names differ (features.denseblock1.denselayer1.norm1 is blocks.0.layers.0.norm1), so
nothing is transposed. timm's DenseNet (default stem) uses torchvision's names exactly. Read:
.pth/.pt/.bin with torch.load(weights_only=True), or .safetensors (no torch needed), including
torchvision's old "norm.1"-style keys (remapped with torchvision's own regex), DataParallel's
"module." prefix and a state_dict nested under "state_dict" / "model" in a training checkpoint.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np

from densenet_convert.errors import (
    FormatCannotHoldError,
    NotADenseNetError,
    UnknownLayoutError,
)
from densenet_convert.recognise import BatchNormFacts
from densenet_spec.config import DenseNetConfig
from densenet_spec.params import param_specs
from densenet_spec.weightfile import atomic_write_bytes

FACTS = BatchNormFacts(1e-5, 0.1, "unbiased", "torch.nn.BatchNorm2d")
SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")

# torchvision.models.densenet._load_state_dict's pattern for checkpoints saved before 0.3
_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)
_LEAF = r"(weight|bias|running_mean|running_var)"
# official name -> canonical name (the inverse of official_name below)
_TO_CANONICAL = [
    (re.compile(rf"^features\.conv0\.{_LEAF}$"), lambda m: f"stem.conv.{m[1]}"),
    (re.compile(rf"^features\.norm0\.{_LEAF}$"), lambda m: f"stem.norm.{m[1]}"),
    (
        re.compile(
            rf"^features\.denseblock(\d+)\.denselayer(\d+)\.(norm1|conv1|norm2|conv2)\.{_LEAF}$"
        ),
        lambda m: f"blocks.{int(m[1]) - 1}.layers.{int(m[2]) - 1}.{m[3]}.{m[4]}",
    ),
    (
        re.compile(rf"^features\.transition(\d+)\.(norm|conv)\.{_LEAF}$"),
        lambda m: f"transitions.{int(m[1]) - 1}.{m[2]}.{m[3]}",
    ),
    (re.compile(rf"^features\.norm5\.{_LEAF}$"), lambda m: f"head.norm.{m[1]}"),
    (re.compile(r"^classifier\.(weight|bias)$"), lambda m: f"head.fc.{m[1]}"),
]


def official_name(name: str) -> str:
    """canonical name -> torchvision's."""
    parts = name.split(".")
    if parts[0] == "stem":
        return f"features.{'conv0' if parts[1] == 'conv' else 'norm0'}.{parts[2]}"
    if parts[0] == "blocks":
        i, j, module, leaf = int(parts[1]), int(parts[3]), parts[4], parts[5]
        return f"features.denseblock{i + 1}.denselayer{j + 1}.{module}.{leaf}"
    if parts[0] == "transitions":
        return f"features.transition{int(parts[1]) + 1}.{parts[2]}.{parts[3]}"
    if parts[1] == "norm":
        return f"features.norm5.{parts[2]}"
    return f"classifier.{parts[2]}"


def check_expressible(config: DenseNetConfig, flavour: str = "torchvision") -> None:
    """torchvision.models.DenseNet: 3 input channels, BC layers, theta 0.5, no conv bias,
    the ImageNet stem; timm's: any input channels, but num_init_features = 2 * growth_rate."""
    problems = []
    if config.stem != "imagenet":
        problems.append(f"stem {config.stem!r} (only the ImageNet stem)")
    if config.bn_size is None:
        problems.append("no bottleneck (bn_size None; only DenseNet-B layers)")
    if config.compression != 0.5:
        problems.append(f"compression {config.compression} (always 0.5)")
    if config.conv_bias:
        problems.append("conv biases (its convolutions have none)")
    if flavour == "torchvision" and config.in_channels != 3:
        problems.append(f"{config.in_channels} input channels (always 3; timm has in_chans)")
    if flavour == "timm" and config.num_init_features != 2 * config.growth_rate:
        problems.append(f"num_init_features {config.num_init_features} (timm's is 2 * growth_rate)")
    if problems:
        raise FormatCannotHoldError(f"{flavour}'s DenseNet cannot hold: " + "; ".join(problems))


def to_canonical(state: dict) -> dict[str, np.ndarray]:
    """A torchvision/timm state_dict (numpy values) -> canonical names; nothing transposed."""
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel / DDP
        state = {k.removeprefix("module."): v for k, v in state.items()}
    out, unknown = {}, []
    for key, value in state.items():
        m = _OLD_KEY.match(key)
        if m:
            key = m[1] + m[2]
        if key.endswith(".num_batches_tracked"):  # torch's counter, not a weight
            continue
        for pattern, rename in _TO_CANONICAL:
            m = pattern.match(key)
            if m:
                out[rename(m)] = value
                break
        else:
            unknown.append(key)
    if not any(n.startswith("blocks.") for n in out):
        shown = ", ".join(sorted(state)[:6]) or "no tensors"
        raise NotADenseNetError(
            "not a torchvision/timm DenseNet state_dict: no features.denseblock<i>.denselayer<j> "
            f"tensors (keys: {shown}{', ...' if len(state) > 6 else ''})"
        )
    if unknown:
        raise UnknownLayoutError(
            f"a DenseNet state_dict with {len(unknown)} tensors the converter does not know "
            f"(a timm deep stem or another variant?): {', '.join(sorted(unknown)[:8])}"
        )
    return out


def from_canonical(tensors: dict, config: DenseNetConfig) -> dict[str, np.ndarray]:
    """canonical tensors -> torchvision's state_dict, num_batches_tracked included (zero)."""
    state = {}
    for spec in param_specs(config):
        state[official_name(spec.name)] = np.asarray(tensors[spec.name])
        if spec.kind == "bn_running_var":
            state[official_name(spec.name).replace("running_var", "num_batches_tracked")] = (
                np.zeros((), np.int64)
            )
    return state


def _unwrap(obj, path) -> dict:
    """The state_dict in what torch.load returned: itself, or nested in a training checkpoint."""
    if not isinstance(obj, dict):
        raise NotADenseNetError(f"{path}: holds a {type(obj).__name__}, not a state_dict")
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj.get(key), dict):
            return _unwrap(obj[key], path)
    others = sorted(k for k, v in obj.items() if not hasattr(v, "shape"))
    if others:
        raise UnknownLayoutError(
            f"{path}: a dict whose entries {others[:5]} are not tensors and that has no "
            "'state_dict' or 'model' entry: pass the state_dict itself"
        )
    return obj


def read(path) -> dict[str, np.ndarray]:
    """The file's tensors as numpy arrays (torch only for .pth/.pt/.bin)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        try:
            return load_file(str(path))
        except Exception as e:
            raise NotADenseNetError(f"{path}: not a readable safetensors file ({e})") from None
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, refused globals, truncated zip
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        why = next((ln for ln in lines if "WeightsUnpickler error" in ln), lines[0] if lines else e)
        raise NotADenseNetError(f"{path}: torch.load(weights_only=True) failed: {why}") from None
    state = _unwrap(obj, path)
    out = {}
    for k, v in state.items():
        v = v.detach().cpu()
        if v.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds it exactly
            v = v.float()
        out[k] = v.numpy()
    return out


def write(path, state: dict) -> None:
    """A .safetensors (numpy only) or torch.save file, written atomically."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.numpy import save

        atomic_write_bytes(path, save({k: np.array(v, order="C") for k, v in state.items()}))
        return
    import torch

    buffer = io.BytesIO()
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, buffer)
    atomic_write_bytes(path, buffer.getvalue())
