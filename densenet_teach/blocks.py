"""The building blocks the page shows, in reading order: where each lives, what measures it.

Every framework package has the same files with the same public names (tests/spec/test_structure.py
holds them to it), so one row names a block in all four. The oracle column names the NumPy
reference that computes the same thing by hand. `keys` says which parity comparisons measure the
block: a forward stage, the gradients of its parameters, its tensors after the SGD steps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from densenet_spec.frameworks import FRAMEWORKS


@dataclass(frozen=True)
class Where:
    """A block in one file: a top-level name, a whole module (name None) or parts of a class."""

    module: str  # file name inside the package: "layers.py"
    name: str | None = None
    parts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Block:
    id: str  # the permalink anchor
    title: str
    summary: str  # one sentence: the concept, as the paper and d2l name it
    where: Where  # the same in every framework package
    oracle: tuple[Where, ...]  # in densenet_spec/
    # Parity keys that measure the block: a regular expression per quantity family (the part of
    # the key after "eval/", "train/", "train_grad/", "step/"), or None where no key applies.
    keys: dict[str, str | None] = field(default_factory=dict)
    needs: str | None = None  # "conv_block" / "bottleneck_block": which layer the config uses


_LAYER = r"blocks\.\d+\.layers\.\d+"

BLOCKS: tuple[Block, ...] = (
    Block(
        "batch_norm",
        "BatchNorm",
        "Normalise each channel by its batch statistics in training and by running averages in "
        "evaluation; the one layer whose defaults differ most between frameworks.",
        Where("layers.py", "batch_norm"),
        (Where("reference.py", "_norm"), Where("reference.py", "_batch_norm")),
        keys={
            "eval": None,
            "train": None,
            "grad": r".*\.norm\d?\.(weight|bias)",
            "step": r".*\.norm\d?\.running_(mean|var)",
        },
    ),
    Block(
        "conv_block",
        "conv_block",
        "d2l's dense layer: BN, ReLU, 3x3 convolution to growth_rate new channels.",
        Where("layers.py", "conv_block"),
        (Where("reference.py", "_conv_block"),),
        keys={"eval": _LAYER, "train": _LAYER, "grad": _LAYER + r"\..*", "step": _LAYER + r"\..*"},
        needs="conv_block",
    ),
    Block(
        "DenseBlock",
        "DenseBlock",
        "Dense connectivity: each layer sees the concatenation of every earlier feature map, "
        "and adds growth_rate channels to it.",
        Where("layers.py", "DenseBlock"),
        (Where("reference.py", "_dense_block"),),
        keys={
            "eval": r"blocks\.\d+",
            "train": r"blocks\.\d+",
            "grad": r"blocks\..*",
            "step": r"blocks\..*",
        },
    ),
    Block(
        "transition_block",
        "transition_block",
        "Between dense blocks: BN, ReLU, 1x1 convolution (compression), 2x2 average pool.",
        Where("layers.py", "transition_block"),
        (Where("reference.py", "_transition"),),
        keys={
            "eval": r"transitions\.\d+",
            "train": r"transitions\.\d+",
            "grad": r"transitions\..*",
            "step": r"transitions\..*",
        },
    ),
    Block(
        "bottleneck_block",
        "bottleneck_block",
        "DenseNet-B layer: a 1x1 convolution to bn_size * growth_rate channels first bounds the "
        "3x3 convolution's input width.",
        Where("layers.py", "bottleneck_block"),
        (Where("reference.py", "_bottleneck_block"),),
        keys={"eval": _LAYER, "train": _LAYER, "grad": _LAYER + r"\..*", "step": _LAYER + r"\..*"},
        needs="bottleneck_block",
    ),
    Block(
        "stem",
        "The stem",
        "ImageNet stem: 7x7/2 convolution, BN, ReLU, 3x3/2 max-pool, padded symmetrically "
        "(CIFAR stem: one 3x3 convolution).",
        Where("model.py", "DenseNet", ("stem",)),
        (Where("reference.py", "_stem"),),
        keys={"eval": r"stem", "train": r"stem", "grad": r"stem\..*", "step": r"stem\..*"},
    ),
    Block(
        "head",
        "The head",
        "Final BN and ReLU, global average pool, linear classifier.",
        Where("model.py", "DenseNet", ("head", "logits")),
        (Where("reference.py", "_network", ("head", "logits")),),
        keys={
            "eval": r"head|logits",
            "train": r"head|logits",
            "grad": r"head\..*",
            "step": r"head\..*",
        },
    ),
    Block(
        "DenseNet",
        "DenseNet",
        "The whole network, assembled from the config alone: stem, dense blocks with "
        "transitions between them, head.",
        Where("model.py", "DenseNet"),
        (Where("reference.py", "_network"),),
        keys={"eval": r".*", "train": r".*", "grad": r".*", "step": r".*"},
    ),
    Block(
        "weights",
        "The weight layout",
        "Canonical weights in and out: one table of names, transposed only where the "
        "framework's layout differs (OIHW <-> HWIO, (out, in) <-> (in, out)).",
        Where("weights.py"),
        (Where("params.py", "param_specs"),),
        keys={"eval": None, "train": None, "grad": None, "step": r".*"},
    ),
    Block(
        "train_step",
        "The train step",
        "Forward in train mode, mean cross-entropy, backward, one SGD-momentum update with "
        "coupled weight decay.",
        Where("train.py", "train_step"),
        (Where("reference.py", "loss"), Where("reference.py", "sgd_step")),
        keys={"eval": None, "train": None, "grad": r".*", "step": r".*"},
    ),
)

# The quantity families of densenet_spec.case.result_keys, in the order the page shows them.
FAMILIES = {
    "eval": "eval forward",
    "train": "train forward",
    "grad": "gradients",
    "step": "after SGD steps",
}


def split_key(key: str) -> tuple[str | None, str]:
    """A parity key -> (family, the rest): "train_grad/stem.conv.weight" -> ("grad", "stem...")."""
    head, _, rest = key.partition("/")
    if head == "loss":  # loss/eval, loss/train: the network's output, one number
        return (rest if rest in ("eval", "train") else None), "loss"
    family = {"eval": "eval", "train": "train", "train_grad": "grad", "eval_grad": "grad"}.get(
        head, "step" if head == "step" else None
    )
    return family, rest


ORACLE_PACKAGE = "densenet_spec"


def framework_names() -> list[str]:
    return list(FRAMEWORKS)


def source_path(framework: str, where: Where) -> str:
    """The file a block lives in, relative to the repository root."""
    package = ORACLE_PACKAGE if framework == "oracle" else FRAMEWORKS[framework].package
    return f"{package}/{where.module}"


def measured_by(block: Block, key: str) -> str | None:
    """The family in which parity key `key` ("eval/blocks.0.layers.1") measures `block`, or None.

    d loss / d input and the losses match only the blocks whose pattern is everything."""
    family, rest = split_key(key)
    pattern = block.keys.get(family) if family else None
    if pattern is None or re.fullmatch(pattern, rest) is None:
        return None
    return family


def in_network(block: Block, config: dict) -> bool:
    """conv_block and bottleneck_block: only one of them is in a given network (bn_size)."""
    if block.needs is None:
        return True
    uses_bottleneck = config.get("bn_size") is not None
    return (block.needs == "bottleneck_block") == uses_bottleneck
