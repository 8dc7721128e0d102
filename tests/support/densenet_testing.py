"""Checks shared by every framework's tests (pytest helpers, kept out of the library). They
import no framework: each suite calls them with its own run_case, in its own environment."""

from __future__ import annotations

import dataclasses

import numpy as np

from densenet_spec.case import make_case
from densenet_spec.config import get_preset

# Published trainable-parameter counts: torchvision's densenet121/161/169/201 and the d2l chapter
# 8.7 model. Literal numbers from those sources, not computed by this project.
PUBLISHED_PARAMETER_COUNTS = {
    "d2l": 758_226,
    "densenet121": 7_978_856,
    "densenet161": 28_681_000,
    "densenet169": 14_149_480,
    "densenet201": 20_013_928,
}


def check_same_padding_mutation(run_case, options: dict | None = None) -> None:
    """--mutate FW:same_padding changes only the stem padding: (2, 3) / (0, 1) on 32x32 gives the
    same shapes, other numbers and untouched weights; on 33x33 'same' pads (3, 3) / (1, 1), exactly
    the spec, so nothing changes."""
    for size, changed in ((32, True), (33, False)):
        case = make_case(
            get_preset("tiny"),
            batch=2,
            image_size=size,
            steps=0,
            quantities=("eval", "step"),
            options=dict(options or {}),
        )
        plain, _ = run_case(case)
        mutated, _ = run_case(
            dataclasses.replace(case, options={**case.options, "mutate": "same_padding"})
        )
        assert mutated["eval/stem"].shape == plain["eval/stem"].shape
        assert (not np.array_equal(mutated["eval/stem"], plain["eval/stem"])) is changed
        for k in plain:
            if k.startswith("step/"):  # zero steps: the loaded weights, under the same names
                np.testing.assert_array_equal(mutated[k], plain[k], err_msg=k)


def check_mutation_errors(run_case) -> None:
    """Unknown mutations, and same_padding on a CIFAR stem (nothing to pad), are refused."""
    import pytest

    case = make_case(get_preset("tiny"), batch=2, image_size=16, quantities=("eval",))
    with pytest.raises(ValueError, match="unknown mutation 'bn_eps'"):
        run_case(dataclasses.replace(case, options={"mutate": "bn_eps"}))
    cifar = make_case(get_preset("densenet_bc_100"), batch=2, image_size=8, quantities=("eval",))
    with pytest.raises(ValueError, match="ImageNet stem"):
        run_case(dataclasses.replace(cifar, options={"mutate": "same_padding"}))
