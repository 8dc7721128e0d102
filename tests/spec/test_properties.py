"""Issue 17, property-based: configs, corrupted weight files and densenet-parity arguments. Whatever
the input, the only exceptions are our named errors (DenseNetError), nothing hangs (a deadline per
example), and what is accepted is sane."""

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from densenet_spec import cli
from densenet_spec.config import DenseNetConfig, check_input_shape, get_preset, min_image_size
from densenet_spec.errors import DenseNetError
from densenet_spec.params import init_params, param_specs
from densenet_spec.weightfile import load_weights, save_weights

FAST = settings(max_examples=60, deadline=2000, suppress_health_check=[HealthCheck.too_slow])

junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.integers(-3, 40), max_size=4),
    st.sampled_from([np.int64(4), np.float32(0.5), np.float64(1e-5), np.bool_(True), np.int32(-2)]),
)


def field(valid):
    return st.one_of(valid, junk)


config_kwargs = st.fixed_dictionaries(
    {},
    optional={
        "growth_rate": field(st.integers(1, 40)),
        "block_config": field(st.lists(st.integers(1, 4), min_size=1, max_size=40).map(tuple)),
        "num_init_features": field(st.integers(1, 64)),
        "stem": field(st.sampled_from(["imagenet", "cifar"])),
        "bn_size": field(st.one_of(st.none(), st.integers(1, 4))),
        "compression": field(st.floats(0.01, 1.0)),
        "conv_bias": field(st.booleans()),
        "in_channels": field(st.integers(1, 4)),
        "num_classes": field(st.integers(1, 1000)),
        "bn_eps": field(st.floats(1e-8, 0.5)),
        "bn_momentum": field(st.floats(0.0, 1.0)),
        "bn_running_var": field(st.sampled_from(["unbiased", "biased"])),
    },
)


@FAST
@given(config_kwargs)
def test_any_config_is_valid_or_a_named_error(kwargs):
    try:
        cfg = DenseNetConfig(**kwargs)
    except DenseNetError:
        return
    # Accepted: plain, finite, in range, and it round-trips through JSON.
    assert DenseNetConfig.from_json(cfg.to_json()) == cfg
    for name in ("growth_rate", "num_init_features", "in_channels", "num_classes"):
        assert type(getattr(cfg, name)) is int and getattr(cfg, name) > 0
    assert all(type(n) is int and n > 0 for n in cfg.block_config)
    assert 0 < cfg.compression <= 1 and 0 < cfg.bn_eps < 1 and 0 <= cfg.bn_momentum <= 1
    assert all(math.isfinite(v) for v in (cfg.compression, cfg.bn_eps, cfg.bn_momentum))
    m = min_image_size(cfg)  # immediate for any depth
    check_input_shape(cfg, (2, cfg.in_channels, m, m))


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=6)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=10,
)


@FAST
@given(st.one_of(json_values.map(json.dumps), st.text(max_size=40)))
def test_any_config_json_is_valid_or_a_named_error(text):
    try:
        DenseNetConfig.from_json(text)
    except DenseNetError:
        pass


TINY = get_preset("tiny")


@pytest.fixture(scope="module")
def weight_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "w.safetensors"
    save_weights(path, init_params(TINY, seed=1, dtype=np.float32, randomize_bn=True), TINY)
    return path.read_bytes()


corruptions = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, 10**6)),
    st.tuples(
        st.just("flip"),
        st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=8),
    ),
    st.tuples(st.just("header"), st.integers(0, 2**64 - 1)),
    st.tuples(
        st.just("metadata"),
        st.dictionaries(
            st.sampled_from(["format", "format_version", "config", "dtype"]),
            st.text(max_size=30),
            max_size=4,
        ),
    ),
    st.tuples(st.just("config"), json_values.map(json.dumps)),
)


@settings(
    max_examples=80, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(corruptions)
def test_corrupted_weight_files_load_correctly_or_fail_by_name(tmp_path, weight_bytes, corruption):
    kind, arg = corruption
    data = bytearray(weight_bytes)
    header_len = int.from_bytes(data[:8], "little")
    if kind == "truncate":
        data = data[: arg % len(data)]
    elif kind == "flip":
        for pos, bits in arg:
            data[pos % len(data)] ^= bits
    elif kind == "header":
        data[:8] = arg.to_bytes(8, "little")
    else:
        header = json.loads(bytes(data[8 : 8 + header_len]))
        if kind == "metadata":
            header["__metadata__"] = arg
        else:
            header["__metadata__"]["config"] = arg
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        data = bytearray(len(raw).to_bytes(8, "little")) + raw + data[8 + header_len :]
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes(bytes(data))
    try:
        tensors, cfg = load_weights(path)
    except DenseNetError:
        return
    # Accepted: every tensor named, shaped and typed as the config says, and finite.
    specs = {s.name: s.shape for s in param_specs(cfg)}
    assert {k: v.shape for k, v in tensors.items()} == specs
    assert all(np.all(np.isfinite(v)) for v in tensors.values())


options = st.lists(
    st.one_of(
        st.tuples(
            st.sampled_from(["--batch", "--image-size", "--steps", "--seed"]),
            st.one_of(st.integers(-3, 10**7).map(str), st.text(max_size=4)),
        ),
        st.tuples(
            st.sampled_from(["--lr", "--momentum", "--weight-decay", "--worker-timeout"]),
            st.one_of(st.floats().map(repr), st.sampled_from(["nan", "inf", "-0", "1e309"])),
        ),
        st.tuples(
            st.sampled_from(["--frameworks", "--quantities", "--preset", "--mutate"]),
            st.one_of(
                st.text(alphabet=",torchjaxfmevalstepgrdn: ", max_size=12),
                st.sampled_from(["torch", "torch:bn_eps", "eval", "step", ","]),
            ),
        ),
    ),
    max_size=5,
)


@FAST
@given(options)
def test_any_arguments_parse_to_a_checked_run_or_a_named_error(opts):
    argv = [f"{k}={v}" for k, v in opts]
    try:
        args = cli.parse_args(argv)
    except SystemExit as e:  # argparse: usage and a named error on stderr
        assert e.code == 2
        return
    try:
        config, frameworks, quantities, mutations, size, *_ = cli.prepare(args)
    except DenseNetError:
        return
    # Accepted: every value is one a run can use.
    assert frameworks and quantities and args.batch >= 1 and size >= 1 and args.seed >= 0
    assert args.steps >= 1 or "step" not in quantities
    assert math.isfinite(args.lr) and args.lr > 0 and 0 <= args.momentum < 1
    assert math.isfinite(args.weight_decay) and args.weight_decay >= 0
    assert math.isfinite(args.worker_timeout) and args.worker_timeout > 0
