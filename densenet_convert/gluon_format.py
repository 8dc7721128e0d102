"""Gluon model-zoo DenseNet .params (mxnet.gluon.model_zoo.vision.densenet121().save_parameters).

Names are the positions in the zoo's nn.HybridSequential: features.0 the stem conv, features.1
its BN, features.4 the first dense block (a layer j is features.4.j.1.{0 BN, 2 conv1x1, 3 BN,
5 conv3x3}: child 0 of the HybridConcurrent is the identity), features.5 the first transition
({0 BN, 2 conv}), and so on in pairs; the last BN follows the last block; output is the
classifier. NCHW and OIHW as torch, so nothing is transposed; BN gamma/beta are weight/bias.
Gluon's BN: epsilon 1e-5, momentum 0.9 (0.1 in torch's convention), biased running variance on
CPU. The zoo model ends in a fixed 7x7 average pool, equal to the spec's global pool only where
the last feature map is 7x7 (224x224 images for four blocks).
"""

from __future__ import annotations

import os
import re
import secrets
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

FACTS = BatchNormFacts(1e-5, 0.1, "biased", "mxnet.gluon.nn.BatchNorm")
SUFFIXES = (".params",)
_BN = {
    "weight": "gamma",
    "bias": "beta",
    "running_mean": "running_mean",
    "running_var": "running_var",
}
_LAYER_CHILD = {"norm1": 0, "conv1": 2, "norm2": 3, "conv2": 5}  # inside a zoo dense layer
_TRANSITION_CHILD = {"norm": 0, "conv": 2}


def official_name(name: str, num_blocks: int) -> str:
    """canonical name -> the zoo's parameter name."""
    parts = name.split(".")
    module, leaf = ".".join(parts[:-1]), parts[-1]
    gluon_leaf = _BN[leaf] if module.split(".")[-1].startswith("norm") else leaf
    if module == "stem.conv":
        return f"features.0.{leaf}"
    if module == "stem.norm":
        return f"features.1.{gluon_leaf}"
    if parts[0] == "blocks":
        i, j = int(parts[1]), int(parts[3])
        return f"features.{4 + 2 * i}.{j}.1.{_LAYER_CHILD[parts[4]]}.{gluon_leaf}"
    if parts[0] == "transitions":
        return f"features.{5 + 2 * int(parts[1])}.{_TRANSITION_CHILD[parts[2]]}.{gluon_leaf}"
    if module == "head.norm":
        return f"features.{3 + 2 * num_blocks}.{gluon_leaf}"
    return f"output.{leaf}"


def _num_blocks(params: dict) -> int:
    tops = {int(m[1]) for k in params if (m := re.match(r"^features\.(\d+)\.\d+\.1\.\d\.", k))}
    return len(tops)


def to_canonical(params: dict) -> dict[str, np.ndarray]:
    """zoo names -> canonical: the name table for this many blocks, inverted."""
    prefixed = [k for k in params if k.startswith(("arg:", "aux:"))]
    if prefixed:
        raise UnknownLayoutError(
            "an exported symbol's parameters (arg:/aux: names, from HybridBlock.export); load "
            "the model in Gluon and save_parameters() instead"
        )
    if not _num_blocks(params):
        shown = ", ".join(sorted(params)[:6]) or "no tensors"
        raise NotADenseNetError(
            "not a Gluon model-zoo DenseNet: no dense layers features.<i>.<j>.1.<k> "
            f"(keys: {shown})"
        )
    num_blocks = _num_blocks(params)
    inverse = {}
    for i in range(num_blocks):  # every name this many blocks could have, up to the layer count
        layers = {
            int(m[1]) for k in params if (m := re.match(rf"^features\.{4 + 2 * i}\.(\d+)\.", k))
        }
        for j in layers:
            for module in _LAYER_CHILD:
                for leaf in _BN:
                    c = f"blocks.{i}.layers.{j}.{module}.{leaf}"
                    inverse[official_name(c, num_blocks)] = c
    for c in ("stem.conv", "stem.norm", "head.norm", "head.fc") + tuple(
        f"transitions.{i}.{m}" for i in range(num_blocks - 1) for m in _TRANSITION_CHILD
    ):
        for leaf in _BN:
            inverse[official_name(f"{c}.{leaf}", num_blocks)] = f"{c}.{leaf}"
    unknown = sorted(k for k in params if k not in inverse)
    if unknown:
        raise UnknownLayoutError(
            "a Gluon DenseNet with parameters the converter does not know: "
            + ", ".join(unknown[:8])
        )
    return {inverse[k]: np.asarray(v) for k, v in params.items()}


def from_canonical(tensors: dict, config: DenseNetConfig) -> dict[str, np.ndarray]:
    n = len(config.block_config)
    return {official_name(s.name, n): np.asarray(tensors[s.name]) for s in param_specs(config)}


def check_expressible(config: DenseNetConfig) -> None:
    problems = []
    if config.stem != "imagenet":
        problems.append(f"stem {config.stem!r} (only the ImageNet stem)")
    if config.bn_size is None:
        problems.append("no bottleneck (bn_size None; only DenseNet-B layers)")
    if config.compression != 0.5:
        problems.append(f"compression {config.compression} (always 0.5)")
    if config.conv_bias:
        problems.append("conv biases (its convolutions have none)")
    if problems:
        raise FormatCannotHoldError("the Gluon zoo's DenseNet cannot hold: " + "; ".join(problems))


def build_official(config: DenseNetConfig, dtype: str = "float32"):
    """The zoo's DenseNet class for `config` (densenet121 etc. are instances of it)."""
    import mxnet as mx
    from mxnet.gluon.model_zoo.vision.densenet import DenseNet

    check_expressible(config)
    net = DenseNet(
        config.num_init_features,
        config.growth_rate,
        list(config.block_config),
        bn_size=config.bn_size,
        classes=config.num_classes,
    )
    net.initialize(ctx=mx.cpu())
    net.cast(dtype)
    return net


def read(path) -> dict[str, np.ndarray]:
    import mxnet as mx

    try:
        loaded = mx.nd.load(str(path))
    except Exception as e:  # MXNetError for anything not written by nd.save
        raise NotADenseNetError(f"{path}: mx.nd.load failed: {str(e).splitlines()[0]}") from None
    if not isinstance(loaded, dict):
        raise UnknownLayoutError(f"{path}: a list of {len(loaded)} arrays without names")
    return {k: v.asnumpy() for k, v in loaded.items()}


def write(path, params: dict) -> None:
    """mx.nd.save, as Block.save_parameters writes it, then an atomic rename."""
    import mxnet as mx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        mx.nd.save(str(tmp), {k: mx.nd.array(v, dtype=v.dtype) for k, v in params.items()})
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
