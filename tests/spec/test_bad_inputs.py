"""Issue 17: every bad input to the framework-free part is a named error, never a hang, a raw
traceback or a silently accepted nonsense value (config, input shapes, weight files, reports)."""

import os
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

from densenet_spec.config import (
    DenseNetConfig,
    check_input_shape,
    get_preset,
    min_image_size,
    spatial_sizes,
)
from densenet_spec.errors import (
    ConfigError,
    InputShapeError,
    NotAWeightFileError,
    WeightFileError,
    WeightValuesError,
)
from densenet_spec.params import init_params
from densenet_spec.weightfile import load_weights, save_weights

TINY = get_preset("tiny")


# --- config ------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["bn_eps", "bn_momentum", "compression"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_floats_are_refused(field, value):
    with pytest.raises(ConfigError, match=f"{field} must be a finite number"):
        DenseNetConfig(**{field: value})


@pytest.mark.parametrize("eps", [1.0, 10.0, 1e300])
def test_an_epsilon_that_rewrites_the_normalisation_is_refused(eps):
    with pytest.raises(ConfigError, match=r"bn_eps must be a finite number in \(0, 1\)"):
        DenseNetConfig(bn_eps=eps)


def test_numpy_scalars_are_plain_values_after_validation():
    cfg = DenseNetConfig(
        growth_rate=np.int64(12),
        block_config=np.array([2, 3]),
        compression=np.float32(0.5),
        bn_eps=np.float64(1e-5),
        bn_momentum=np.float32(0.25),
        conv_bias=np.bool_(False),
        bn_size=np.int32(4),
    )
    assert cfg == DenseNetConfig(
        12, (2, 3), compression=0.5, conv_bias=False, bn_size=4, bn_momentum=0.25
    )
    assert type(cfg.growth_rate) is int and type(cfg.compression) is float
    assert type(cfg.block_config[0]) is int and type(cfg.conv_bias) is bool
    assert DenseNetConfig.from_json(cfg.to_json()) == cfg


def test_numpy_scalars_out_of_range_get_a_self_consistent_message():
    with pytest.raises(ConfigError) as e:
        DenseNetConfig(compression=np.float32(1.5))
    assert str(e.value) == "compression must be a finite number in (0, 1], got 1.5"
    with pytest.raises(ConfigError, match=r"growth_rate must be a positive integer, got -3$"):
        DenseNetConfig(growth_rate=np.int64(-3))
    with pytest.raises(ConfigError, match="bn_momentum"):
        DenseNetConfig(bn_momentum=np.float32("nan"))


@pytest.mark.parametrize("blocks", [5, "44", None, np.zeros((2, 2), int)])
def test_block_config_that_is_not_a_sequence_is_named(blocks):
    with pytest.raises(ConfigError, match="block_config"):
        DenseNetConfig(block_config=blocks)


@pytest.mark.parametrize("text", ["[1, 2]", "3", "null", '"d2l"', "{not json", '{"1": 2}'])
def test_config_json_that_is_not_an_object_is_a_config_error(text):
    with pytest.raises(ConfigError):
        DenseNetConfig.from_json(text)


# --- input shapes --------------------------------------------------------------------------------


@pytest.mark.parametrize("blocks", [20, 30, 60])
def test_min_image_size_of_deep_configs_is_immediate(blocks):
    cfg = DenseNetConfig(
        growth_rate=1, block_config=(1,) * blocks, num_init_features=1, compression=1.0
    )
    start = time.perf_counter()
    m = min_image_size(cfg)
    assert m == 2 ** (blocks + 1) - 3  # ceil(m / 4) >= 2^(blocks - 1): stem /4, then halvings
    with pytest.raises(InputShapeError, match=f"smallest square input is {m}x{m}"):
        check_input_shape(cfg, (2, 1, 64, 64))
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("name", ["d2l", "densenet121", "densenet_bc_100", "tiny"])
def test_min_image_size_is_the_smallest_that_fits(name):
    cfg = get_preset(name)
    m = min_image_size(cfg)

    def fits(n):
        return min(min(hw) for hw in spatial_sizes(cfg, n, n).values()) >= 1

    assert fits(m) and not any(fits(n) for n in range(1, m))


class SymbolicDim:
    """Like a jax.export symbolic dimension: no integer value until it is bound."""

    def __int__(self):
        raise TypeError("symbolic dimension has no value yet")

    def __index__(self):
        raise TypeError("symbolic dimension has no value yet")


def test_unknown_batch_is_accepted_and_known_dims_are_still_checked():
    cfg = get_preset("d2l")
    for batch in (None, SymbolicDim()):
        check_input_shape(cfg, (batch, 1, 96, 96))
        check_input_shape(cfg, (batch, 96, 96, 1), "NHWC", training=True)
        with pytest.raises(InputShapeError, match="3 channels"):
            check_input_shape(cfg, (batch, 3, 96, 96))
        with pytest.raises(InputShapeError, match="too small"):
            check_input_shape(cfg, (batch, 1, 20, 20))
    check_input_shape(cfg, (2, 1, None, None))  # unknown image size: nothing to check yet
    with pytest.raises(InputShapeError, match="negative"):
        check_input_shape(cfg, (2, 1, -96, 96))
    with pytest.raises(InputShapeError, match="integers"):
        check_input_shape(cfg, (2.0, 1, 96, 96))
    with pytest.raises(InputShapeError, match="sequence"):
        check_input_shape(cfg, 96)


# --- weight files ------------------------------------------------------------------------------


@pytest.fixture
def params():
    return init_params(TINY, seed=3, dtype=np.float64, randomize_bn=True)


def _write_with_config(path, params, config_json: str):
    from safetensors.numpy import save_file

    meta = {
        "format": "densenet-parity",
        "format_version": "1",
        "config": config_json,
        "dtype": "float64",
    }
    save_file({k: np.ascontiguousarray(v) for k, v in params.items()}, str(path), metadata=meta)


@pytest.mark.parametrize("config_json", ["[1, 2, 3]", "42", "{oops", '{"growth_rate": -1}'])
def test_unusable_config_in_a_weight_file_is_a_weight_file_error(tmp_path, params, config_json):
    path = tmp_path / "w.safetensors"
    _write_with_config(path, params, config_json)
    with pytest.raises(WeightFileError, match="config in metadata is unusable") as e:
        load_weights(path)
    assert "TypeError" not in str(e.value) and "argument after **" not in str(e.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused_on_load(tmp_path, params, bad):
    params["blocks.0.layers.1.conv2.weight"][0, 0, 0, 0] = bad
    path = tmp_path / "w.safetensors"
    save_weights(path, params, TINY)
    with pytest.raises(
        WeightValuesError, match=r"NaN or infinite entries in blocks\.0\.layers\.1\.conv2\.weight"
    ):
        load_weights(path)
    tensors, _ = load_weights(path, check_values=False)  # a diverged run can still be inspected
    assert not np.isfinite(tensors["blocks.0.layers.1.conv2.weight"][0, 0, 0, 0])


def test_negative_running_variance_is_refused_on_load(tmp_path, params):
    params["stem.norm.running_var"][1] = -0.5
    path = tmp_path / "w.safetensors"
    save_weights(path, params, TINY)
    with pytest.raises(
        WeightValuesError, match=r"negative running variance in stem\.norm\.running_var"
    ):
        load_weights(path)


def test_a_directory_is_named_as_one(tmp_path):
    with pytest.raises(NotAWeightFileError, match="is a directory"):
        load_weights(tmp_path)


def test_a_killed_save_leaves_a_temp_file_that_the_next_save_removes(tmp_path, params):
    path = tmp_path / "w.safetensors"
    script = (
        "import os, sys, numpy as np\n"
        "import densenet_spec.weightfile as wf\n"
        "from densenet_spec.config import get_preset\n"
        "from densenet_spec.params import init_params\n"
        "os.fsync = lambda fd: os.kill(os.getpid(), 9)  # killed between write and rename\n"
        "cfg = get_preset('tiny')\n"
        "wf.save_weights(sys.argv[1], init_params(cfg, 0, np.float64), cfg)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(path)], timeout=60)
    assert proc.returncode == -9
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".w.safetensors.") and left[0].endswith(".tmp")
    save_weights(path, params, TINY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]


def test_a_save_keeps_the_replaced_files_permissions_and_new_files_follow_the_umask(
    tmp_path, params
):
    old = os.umask(0o022)
    try:
        fresh = tmp_path / "new.safetensors"
        save_weights(fresh, params, TINY)
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o644
        shared = tmp_path / "shared.safetensors"
        save_weights(shared, params, TINY)
        shared.chmod(0o664)
        save_weights(shared, params, TINY)
        assert stat.S_IMODE(shared.stat().st_mode) == 0o664
    finally:
        os.umask(old)
