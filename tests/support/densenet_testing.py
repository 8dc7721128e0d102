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


# ---- NaN through the stem's max-pool (every framework's errors tests)

NAN_WINDOWS = 4 + 25  # windows of nan_pool_input() that hold a NaN (3x3, stride 2, pad 1: 5x5 out)


def nan_pool_input() -> np.ndarray:
    """(2, 3, 9, 9) NCHW: one NaN on a window border (four windows), one all-NaN channel."""
    x = np.random.default_rng(1).standard_normal((2, 3, 9, 9))
    x[0, 1, 3, 3] = np.nan
    x[1, 2] = np.nan
    return x


def max_pool_reference(x: np.ndarray) -> np.ndarray:
    """The stem's 3x3 / stride 2 / pad 1 max-pool of NCHW x with -inf padding, as the oracle's
    pool computes it: np.max propagates NaN."""
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    out = (x.shape[2] + 1) // 2
    rows = [
        np.stack([xp[:, :, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].max((2, 3)) for j in range(out)])
        for i in range(out)
    ]
    return np.stack(rows).transpose(2, 3, 0, 1)


def nan_images(where: str) -> tuple[dict, np.ndarray]:
    """Tiny's weights and two NCHW 32x32 images, the first with NaN in one pixel or ("all")
    everywhere."""
    from densenet_spec.params import init_params

    params = init_params(get_preset("tiny"), 0, np.float64, randomize_bn=True)
    x = np.random.default_rng(2).standard_normal((2, 3, 32, 32))
    if where == "all":
        x[0] = np.nan
    else:
        x[0, 1, 5, 7] = np.nan
    return params, x


def check_nan_logits(got: np.ndarray, params: dict, x: np.ndarray, training: bool) -> None:
    """NaN exactly where the oracle has it (all of image 0); in eval mode image 1 is untouched
    and matches the oracle."""
    from densenet_spec import reference

    want = reference.forward_features(params, get_preset("tiny"), x, training)[0]["logits"]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(got[0]).all()
    if not training:
        np.testing.assert_allclose(got[1], want[1], rtol=1e-10)


def spec_command(module: str, *args, timeout: float = 900):
    """`python -m <module> ARGS` in the spec environment, as a user runs a console command;
    output captured as text (subprocess.CompletedProcess)."""
    import subprocess
    import sys

    import densenet_envs as envs

    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=envs.worker_env("spec"),
    )
