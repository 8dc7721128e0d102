"""The formats, how a file name tells them, which environment reads and writes each, and the two
steps every conversion is made of: a file to canonical tensors + config, and back.

Both steps run in any environment that has the format's framework (the name tables are NumPy
only); the CLI runs them in that environment through worker.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from densenet_convert import gluon_format, keras_format, torchvision_format
from densenet_convert.errors import UnknownFormatError
from densenet_convert.recognise import BatchNormFacts, floating, recognise_config
from densenet_spec.config import DenseNetConfig
from densenet_spec.weightfile import FORMAT as CANONICAL_METADATA


@dataclass(frozen=True)
class Format:
    name: str
    title: str  # the official model, for messages
    env: str  # the environment with its framework
    facts: BatchNormFacts | None  # None: the file states its config (canonical)


FORMATS = {
    f.name: f
    for f in (
        Format("canonical", "densenet-parity weight file", "spec", None),
        Format("torchvision", "torchvision.models.DenseNet", "torch", torchvision_format.FACTS),
        Format("timm", "timm DenseNet (default stem)", "torch", torchvision_format.FACTS),
        Format("keras", "keras.applications DenseNet", "tf", keras_format.FACTS),
        Format("gluon", "Gluon model zoo DenseNet", "mx", gluon_format.FACTS),
    )
}


def get_format(name: str) -> Format:
    try:
        return FORMATS[name]
    except KeyError:
        raise UnknownFormatError(f"unknown format {name!r}; known: {', '.join(FORMATS)}") from None


def _is_canonical(path: Path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            return (f.metadata() or {}).get("format") == CANONICAL_METADATA
    except Exception:
        return False


def detect_format(path, *, exists: bool) -> str:
    """The format a file name tells; a .safetensors source is canonical if its metadata says so,
    else a torchvision/timm state_dict; a .safetensors destination is canonical."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".safetensors"):
        return "canonical" if not exists or _is_canonical(path) else "torchvision"
    for fmt, suffixes in (
        ("torchvision", torchvision_format.SUFFIXES),
        ("keras", keras_format.SUFFIXES),
        ("gluon", gluon_format.SUFFIXES),
    ):
        if name.endswith(suffixes):
            return fmt
    raise UnknownFormatError(
        f"{path}: the file name does not tell the format (.pth/.pt/.bin/.safetensors: torchvision "
        "or timm; .weights.h5/.keras/.h5: keras; .params: gluon); name it with --from / --to: "
        + ", ".join(FORMATS)
    )


def env_for(fmt: str, path) -> str:
    """torchvision/timm .safetensors need no torch: the spec environment reads and writes them."""
    if fmt in ("torchvision", "timm") and str(path).endswith(".safetensors"):
        return "spec"
    return get_format(fmt).env


def read_canonical(path, fmt: str) -> tuple[dict[str, np.ndarray], DenseNetConfig]:
    """Any supported file -> canonical tensors (one float dtype) and the recognised config."""
    from densenet_spec import weightfile

    spec = get_format(fmt)
    if fmt == "canonical":
        return weightfile.load_weights(path)
    if fmt in ("torchvision", "timm"):
        tensors = torchvision_format.to_canonical(torchvision_format.read(path))
    elif fmt == "keras":
        tensors = keras_format.to_canonical(keras_format.read(path))
    else:
        tensors = gluon_format.to_canonical(gluon_format.read(path))
    tensors = floating(tensors)
    return tensors, recognise_config(tensors, spec.facts)


def bn_warnings(config: DenseNetConfig, fmt: str) -> list[str]:
    """What the target's official model does differently from the config's BatchNorm."""
    facts = get_format(fmt).facts
    if facts is None:
        return []
    out = []
    if config.bn_eps != facts.bn_eps:
        out.append(
            f"{facts.source} uses BN epsilon {facts.bn_eps:g}, the weights were made with "
            f"{config.bn_eps:g}: its logits differ slightly (each BN output by about "
            f"{abs(config.bn_eps - facts.bn_eps) / 2:.0e} / variance, relative)"
        )
    if (config.bn_momentum, config.bn_running_var) != (facts.bn_momentum, facts.bn_running_var):
        out.append(
            f"training in {get_format(fmt).title} updates running statistics with momentum "
            f"{facts.bn_momentum:g} (torch's convention) and the {facts.bn_running_var} variance; "
            f"the config says {config.bn_momentum:g} and {config.bn_running_var} (eval logits "
            "are unaffected)"
        )
    return out


def check_target(fmt: str, config: DenseNetConfig) -> None:
    """FormatCannotHoldError unless the official model of `fmt` can express `config`."""
    get_format(fmt)
    if fmt in ("torchvision", "timm"):
        torchvision_format.check_expressible(config, fmt)
    elif fmt == "keras":
        keras_format.check_expressible(config)
    elif fmt == "gluon":
        gluon_format.check_expressible(config)


def write_format(path, fmt: str, tensors: dict, config: DenseNetConfig) -> list[str]:
    """Canonical tensors -> a file of `fmt`, atomically; returns warnings (BN differences)."""
    from densenet_spec import weightfile

    check_target(fmt, config)
    if fmt == "canonical":
        weightfile.save_weights(path, tensors, config)
        return []
    if fmt in ("torchvision", "timm"):
        torchvision_format.write(path, torchvision_format.from_canonical(tensors, config))
    elif fmt == "keras":
        keras_format.write(path, keras_format.from_canonical(tensors, config), config)
    else:
        gluon_format.write(path, gluon_format.from_canonical(tensors, config))
    return bn_warnings(config, fmt)
