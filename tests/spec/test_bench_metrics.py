"""densenet-bench's FLOP count against an independent count, written out by hand."""

import pytest

from densenet_bench import metrics
from densenet_spec.config import PRESETS


def densenet121_macs_by_hand(size: int = 224) -> int:
    """DenseNet-121 (paper, Table 1) written out layer by layer, nothing from densenet_spec."""
    macs = 64 * 3 * 7 * 7 * (size // 2) ** 2  # stem conv 7x7/2
    side, channels = size // 4, 64  # after the 3x3/2 max-pool
    for i, layers in enumerate((6, 12, 24, 16)):
        for _ in range(layers):
            macs += 128 * channels * side**2  # 1x1 conv to 4k = 128
            macs += 32 * 128 * 9 * side**2  # 3x3 conv to k = 32
            channels += 32
        if i < 3:
            macs += (channels // 2) * channels * side**2  # transition 1x1 conv, theta 0.5
            channels //= 2
            side //= 2
    return macs + 1000 * 1024  # classifier


def test_densenet121_forward_is_torchvisions_2_83_gmac():
    by_hand = densenet121_macs_by_hand()
    assert metrics.forward_macs(PRESETS["densenet121"], 224) == by_hand
    assert by_hand == pytest.approx(2.83e9, rel=0.01)  # torchvision's published "GFLOPS"


def test_densenet121_forward_with_bn_relu_pool_is_2_87_g():
    # profilers (ptflops) add one op per element for each BN, ReLU and pooling input
    assert metrics.forward_ops(PRESETS["densenet121"], 224) == pytest.approx(2.87e9, rel=0.01)


@pytest.mark.parametrize(
    "name, gmac", [("densenet161", 7.73), ("densenet169", 3.36), ("densenet201", 4.29)]
)
def test_other_imagenet_presets_match_torchvisions_published_cost(name, gmac):
    assert metrics.forward_macs(PRESETS[name], 224) == pytest.approx(gmac * 1e9, rel=0.01)


def test_a_train_step_counts_three_forwards():
    c = PRESETS["tiny"]
    assert metrics.step_flops(c, 32, 4, "train") == 3 * metrics.step_flops(c, 32, 4, "infer")
    assert metrics.step_flops(c, 32, 4, "infer") == 2 * 4 * metrics.forward_macs(c, 32)


def test_rates_derive_throughput_compile_time_and_fraction_of_peak():
    line = {
        "median_s": 0.5,
        "batch": 4,
        "max_s": 1.0,
        "min_s": 0.25,
        "first_call_s": 3.0,
        "image_size": 32,
        "mode": "infer",
        "config": PRESETS["tiny"].to_dict(),
        "peak": {"gflops": 10.0},
    }
    r = metrics.rates(line)
    assert (r["throughput"], r["throughput_min"], r["throughput_max"]) == (8.0, 4.0, 16.0)
    assert r["compile_s"] == 2.5
    gflops = metrics.step_flops(PRESETS["tiny"], 32, 4, "infer") / 0.5 / 1e9
    assert r["achieved_gflops"] == pytest.approx(gflops)
    assert r["fraction_of_peak"] == pytest.approx(gflops / 10.0)
