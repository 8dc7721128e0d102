"""keras.applications DenseNet weights: Keras 3 .weights.h5 and .keras, Keras 2 (legacy) .h5.

Layers are named by role (conv2_block1_1_conv is blocks.0.layers.0.conv1); a layer's variables
are stored by position: a conv's kernel, a BN's gamma, beta, moving mean and moving variance, the
classifier's kernel and bias. Two tensors change layout: conv kernels HWIO -> OIHW and the dense
kernel (in, out) -> (out, in). keras.applications fixes growth rate 32, bn_size 4, 64 stem
channels and four blocks, and its BN differs from torch's: epsilon 1.001e-5, momentum 0.99 (0.01
in torch's convention), biased running variance. Reading needs h5py only; writing builds the
official model (keras.applications) and saves it, so the file is exactly what Keras writes.
"""

from __future__ import annotations

import io
import os
import re
import secrets
import zipfile
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

FACTS = BatchNormFacts(1.001e-5, 0.01, "biased", "keras.applications (BatchNormalization)")
SUFFIXES = (".weights.h5", ".keras", ".h5")
# a layer's variables, in the order Keras stores them
VARIABLES = {
    "conv": ("kernel", "bias"),
    "bn": ("gamma", "beta", "moving_mean", "moving_variance"),
    "dense": ("kernel", "bias"),
}
_BN_LEAF = dict(zip(VARIABLES["bn"], ("weight", "bias", "running_mean", "running_var")))
_PUBLIC = {
    (6, 12, 24, 16): "DenseNet121",
    (6, 12, 32, 32): "DenseNet169",
    (6, 12, 48, 32): "DenseNet201",
}


def layer_name(module: str) -> str:
    """canonical module (stem.conv, blocks.0.layers.0.norm1, ...) -> keras.applications layer."""
    parts = module.split(".")
    if parts[0] == "stem":
        return "conv1_conv" if parts[1] == "conv" else "conv1_bn"
    if parts[0] == "blocks":
        role = {"norm1": "0_bn", "conv1": "1_conv", "norm2": "1_bn", "conv2": "2_conv"}[parts[4]]
        return f"conv{int(parts[1]) + 2}_block{int(parts[3]) + 1}_{role}"
    if parts[0] == "transitions":
        return f"pool{int(parts[1]) + 2}_{'bn' if parts[2] == 'norm' else 'conv'}"
    return "bn" if parts[1] == "norm" else "predictions"


def _module(layer: str) -> str | None:
    """keras layer -> canonical module, or None for a name the converter does not know."""
    layer = layer.replace("/", "_")  # Keras 2 named the stem conv1/conv and conv1/bn
    if layer in ("conv1_conv", "conv1_bn"):
        return "stem.conv" if layer == "conv1_conv" else "stem.norm"
    if layer == "bn":
        return "head.norm"
    if layer in ("predictions", "fc1000"):  # Keras 2: fc1000
        return "head.fc"
    m = re.match(r"^conv(\d+)_block(\d+)_(0_bn|1_conv|1_bn|2_conv)$", layer)
    if m and int(m[1]) >= 2 and int(m[2]) >= 1:
        role = {"0_bn": "norm1", "1_conv": "conv1", "1_bn": "norm2", "2_conv": "conv2"}[m[3]]
        return f"blocks.{int(m[1]) - 2}.layers.{int(m[2]) - 1}.{role}"
    m = re.match(r"^pool(\d+)_(bn|conv)$", layer)
    if m and int(m[1]) >= 2:
        return f"transitions.{int(m[1]) - 2}.{'norm' if m[2] == 'bn' else 'conv'}"
    return None


def _kind(module: str) -> str:
    last = module.rsplit(".", 1)[1]
    return "dense" if last == "fc" else "bn" if last.startswith("norm") else "conv"


def check_expressible(config: DenseNetConfig) -> None:
    problems = []
    for field, want in (
        ("growth_rate", 32),
        ("bn_size", 4),
        ("num_init_features", 64),
        ("compression", 0.5),
        ("stem", "imagenet"),
        ("conv_bias", False),
    ):
        if getattr(config, field) != want:
            problems.append(f"{field} {getattr(config, field)!r} (always {want!r})")
    if len(config.block_config) != 4:
        problems.append(f"{len(config.block_config)} dense blocks (always 4)")
    if problems:
        raise FormatCannotHoldError(
            "keras.applications' DenseNet cannot hold: " + "; ".join(problems)
        )


def to_canonical(layers: dict[str, list]) -> dict[str, np.ndarray]:
    """{keras layer name: [its variables in order]} -> canonical tensors in torch layout."""
    out, unknown = {}, []
    for layer, variables in layers.items():
        module = _module(layer)
        if module is None:
            unknown.append(layer)
            continue
        kind = _kind(module)
        names = VARIABLES[kind]
        if len(variables) > len(names) or (kind == "bn" and len(variables) != 4):
            raise UnknownLayoutError(
                f"layer {layer} holds {len(variables)} variables; a keras.applications "
                f"{kind} layer holds {' and '.join(names[: 4 if kind == 'bn' else 2])}"
            )
        for var, value in zip(names, variables):
            value = np.asarray(value)
            if kind == "bn":
                out[f"{module}.{_BN_LEAF[var]}"] = value
            elif var == "bias":
                out[f"{module}.bias"] = value
            elif kind == "conv":
                out[f"{module}.weight"] = value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
            else:
                out[f"{module}.weight"] = value.T  # (in, out) -> (out, in)
    if not any(n.startswith("blocks.") for n in out):
        raise NotADenseNetError(
            "no keras.applications DenseNet layers (conv2_block1_1_conv, ...) among: "
            + ", ".join(sorted(layers)[:6])
        )
    if unknown:
        raise UnknownLayoutError(
            f"layers with weights the converter does not know: {', '.join(sorted(unknown)[:8])}"
        )
    return {n: np.ascontiguousarray(v) for n, v in out.items()}


def from_canonical(tensors: dict, config: DenseNetConfig) -> dict[str, list[np.ndarray]]:
    """canonical tensors -> {keras layer name: [variables in Keras's order]}."""
    layers: dict[str, dict] = {}
    for spec in param_specs(config):
        module, leaf = spec.name.rsplit(".", 1)
        value = np.asarray(tensors[spec.name])
        kind = _kind(module)
        if kind == "bn":
            var = {v: k for k, v in _BN_LEAF.items()}[leaf]
        elif leaf == "bias":
            var = "bias"
        else:
            var = "kernel"
            value = value.transpose(2, 3, 1, 0) if kind == "conv" else value.T
        layers.setdefault(layer_name(module), {})[var] = np.ascontiguousarray(value)
    return {
        layer: [v[name] for name in VARIABLES[_kind(_module(layer))] if name in v]
        for layer, v in layers.items()
    }


def _read_h5(f) -> dict[str, list]:
    """Keras 3 (layers/<auto name>/vars/<i>, the layer's name as an attribute) or Keras 2
    (a group per layer name, listed in the root's layer_names with weight_names)."""
    import h5py

    if "layer_names" in f.attrs:  # Keras 2 legacy format
        layers = {}
        for raw in f.attrs["layer_names"]:
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            group = f[name]
            weights = [
                w.decode() if isinstance(w, bytes) else str(w) for w in group.attrs["weight_names"]
            ]
            if weights:
                layers[name] = [np.asarray(group[w]) for w in weights]
        return layers
    if "layers" not in f:
        raise NotADenseNetError(
            "an HDF5 file with neither Keras 3 'layers' nor Keras 2 layer_names"
        )
    layers = {}
    for key, group in f["layers"].items():
        vars_ = group.get("vars")
        if not isinstance(vars_, h5py.Group) or len(vars_) == 0:
            continue
        name = vars_.attrs.get("name")
        if name is None:
            raise UnknownLayoutError(
                f"layer group {key} has no name attribute (an older Keras 3 file): load it in "
                "keras.applications and save_weights again"
            )
        name = name.decode() if isinstance(name, bytes) else str(name)
        if not all(k.isdigit() for k in vars_):
            raise UnknownLayoutError(f"layer {name} stores nested variables: {sorted(vars_)}")
        layers[name] = [np.asarray(vars_[str(i)]) for i in range(len(vars_))]
    return layers


def read(path) -> dict[str, list]:
    import h5py

    path = Path(path)
    try:
        if path.suffix == ".keras":
            with zipfile.ZipFile(path) as z:
                if "model.weights.h5" not in z.namelist():
                    raise NotADenseNetError(f"{path}: a .keras archive without model.weights.h5")
                data = io.BytesIO(z.read("model.weights.h5"))
            with h5py.File(data, "r") as f:
                return _read_h5(f)
        with h5py.File(path, "r") as f:
            return _read_h5(f)
    except (OSError, zipfile.BadZipFile) as e:
        raise NotADenseNetError(f"{path}: not a readable Keras file ({e})") from None


def build_official(config: DenseNetConfig, dtype: str = "float32", image_size: int = 224):
    """keras.applications' DenseNet for `config` (public DenseNet121/169/201 where they fit)."""
    import keras

    check_expressible(config)
    blocks = tuple(config.block_config)
    kwargs = dict(
        include_top=True,
        weights=None,  # never download
        input_shape=(image_size, image_size, config.in_channels),
        classes=config.num_classes,
        classifier_activation=None,  # logits, as every model here
    )
    previous, floatx = keras.config.dtype_policy(), keras.config.floatx()
    keras.config.set_dtype_policy(dtype)
    keras.config.set_floatx(dtype)  # the Input layer takes floatx, not the dtype policy
    try:
        if blocks in _PUBLIC:
            return getattr(keras.applications, _PUBLIC[blocks])(**kwargs)
        from keras.src.applications.densenet import DenseNet  # other depths: not exported

        return DenseNet(list(blocks), **kwargs)
    finally:
        keras.config.set_dtype_policy(previous)
        keras.config.set_floatx(floatx)


def set_official_weights(model, layers: dict[str, list]) -> None:
    for name, variables in layers.items():
        model.get_layer(name).set_weights(variables)


def write(path, layers: dict[str, list], config: DenseNetConfig) -> None:
    """Build the official model, set every layer, save: .weights.h5 or .keras, atomically."""
    path = Path(path)
    if not (path.name.endswith(".weights.h5") or path.suffix == ".keras"):
        raise FormatCannotHoldError(
            f"{path}: Keras 3 writes .weights.h5 or .keras (Keras 2's .h5 is read only)"
        )
    dtype = str(next(iter(layers.values()))[0].dtype)
    model = build_official(config, dtype)
    set_official_weights(model, layers)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{os.getpid()}.{secrets.token_hex(4)}.tmp-{path.name}"
    try:
        if path.suffix == ".keras":
            model.save(tmp)
        else:
            model.save_weights(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
