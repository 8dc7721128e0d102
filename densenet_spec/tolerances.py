"""Every tolerance in the project, in one place, with the reason for each number.

Error measure: relative max error, max|a - b| / max|b| (b the reference: the oracle, or the second
framework of a pair), computed per tensor. Two exceptions for gradients, both named:
- keys whose exact value is zero (train-mode gradients of a conv bias: every conv output in a
  DenseNet reaches the loss only through a train-mode BatchNorm, whose batch-mean subtraction cancels
  any constant shift, so d loss / d bias = 0 exactly) are measured against the largest gradient of
  the same family, since their computed values are pure rounding noise;
- any other gradient tensor is measured against max(its own largest entry, GRAD_FLOOR x the family's
  largest). Cancellation makes some gradients nearly zero depending on the data: the stem BN's beta
  when the max-pool passes every value of a channel (the next train-mode BNs cancel the shift),
  its gamma nearly so. Their relative error is rounding noise, not semantics.
"step/" keys (parameters after an update) are O(1) tensors and compared as they are, with one
float32 rule: a parameter whose gradient is exactly zero (conv biases) moves only by weight decay and
by its gradient's rounding noise, which differs between kernels by orders of magnitude (MXNet's conv
bias gradient noise is ~50x the oracle's). Its float32 bound adds that noise carried through the
steps: lr * sum_k (1 - m^k) / (1 - m) * (train_grad bound * largest gradient) / max|param|
(compare.float32_step_allowance).
A second float32 rule, the ReLU-kink allowance (compare.float32_kink_allowance), for train_grad/ and
step/ keys: float32 train-mode gradients are discontinuous at ReLU kinks. A BatchNorm output within
float32 rounding of 0 flips the following ReLU's mask in whichever implementation's rounding crosses
0, and every gradient backward reaches after it changes by that entry's upstream gradient. Measured on
DenseNet-121, 64x64, batch 2, seed 0: of 690,176 BN outputs in blocks 2-3, 1 has |y| < 1e-6, 6
|y| < 1e-5, 57 |y| < 1e-4 (float64); JAX flips blocks.2.layers.10.norm1 channel 365 (y = -9.3e-7):
norm1.bias off by 1.8e-2 relative; MXNet (whose CPU BN sums means sequentially in float32: ~1.6x
torch's forward error) flips blocks.3.layers.13.norm1 channel 574 (y = +8.5e-5): norm1.bias off by
0.15 and 127 tensors after it in backward order. The bound above covers only flips the float32
oracle happens to share. The rule:
- near-kink: an entry of a train-mode ReLU input with |y| < FLOAT32_SAFETY x the oracle's own
  float32 error (max-abs over that ReLU input, float32 forward against float64) - how far an
  independent float32 implementation's BN output can be from the truth there, by the same argument
  as the bound above (DenseNet-121 above: thresholds 4.7e-5 .. 2.4e-3; 4.9e-4 and 1.8e-3 at the
  JAX and MXNet ReLUs; 643 entries near a kink);
- the float64 oracle's train-mode gradients are recomputed twice, with every near-kink derivative
  forced to 1 and then to 0; key k's allowance is max(|g_on - g| + |g_off - g|) over its entries,
  divided by k's rel_errors denominator (a relative bound to add), and step/<p> gets it carried like
  the conv-bias rule: lr * sum_k (1 - m^k) / (1 - m) * that abs change / max|param|. Keys that
  backward reaches before every near-kink entry (head.fc) get nothing; with no near-kink entry, no
  allowance. Cost: 2 forward+backward passes and 2 forwards, ~0.9x the oracle's own time.
Known limits: exact for one flipped entry; with several, entries' effects can cancel inside the
all-on/all-off sums, so it is not a proof for an implementation flipping a subset (with the
threshold at 1x or 4x instead of 16x, MXNet's flip was under-covered by up to 10% on 2-3 keys). It is
loose where many entries are near: DenseNet-121 above, 362 of 365 train_grad keys get an allowance,
median 0.13, 289 above 0.1, largest 0.69 (blocks.3.layers.10.conv1.weight); even at 1x (45 entries)
the median is 2.2e-2. A float32 train_grad difference of a few % there is not a verdict: that is what
the kinks make of float32 train-mode gradients on this case. Forward keys, eval_grad and float64 are
untouched. The step allowance is derived on case.x (the first step's batch), not on later batches.
"""

from __future__ import annotations

# float64: semantics. Two correct float64 implementations differ by rounding alone, ~1e-16 per op,
# grown by accumulation and depth: measured torch/MXNet vs oracle, worst over every stage, <= 6e-14
# forward, <= 2e-12 gradients, <= 3e-13 after a step (d2l 96px, DenseNet-121 64px, BC-100, tiny).
# 1e-10 / 1e-9 leave >= 500x margin and still catch any semantic difference (eps 1e-3 instead of
# 1e-5: 2e-3; 'same' stem padding: 0.17; biased running variance: 1e-2).
# Conditioning limit: a train-mode BatchNorm that sees 2 values per channel (DenseNet-121 at 32x32,
# batch 2: the last block is 1x1) amplifies rounding so much that torch against itself with
# channels_last differs by 1.6e-8 (train) and 4e-7 (gradients). Parity cases keep at least 2x2 at the
# last block (DenseNet-121 at >= 64x64); eval mode has no such limit.
FLOAT64 = {
    "eval": 1e-10,
    "train": 1e-10,
    "loss": 1e-10,
    "eval_grad": 1e-9,  # backward sums over the batch and spatial positions: one more accumulation
    "train_grad": 1e-9,
    "step": 1e-9,
}

# float32: rounding. The bound for a key is max(FLOAT32_FLOOR[q], FLOAT32_SAFETY * e32[key]),
# where e32[q] is the error of the NumPy oracle computed in float32 against itself in float64 on the
# same case: an independent float32 implementation's own rounding error on exactly this input. Two
# float32 implementations each make an error of that size with different accumulation orders
# (BLAS blocking, oneDNN, Winograd), so their difference is at most a small multiple of it.
# Train-mode BN backward is ill-conditioned where a BatchNorm sees few values per channel
# (batch x 1 x 1 at the head of DenseNet-121): e32 is large there and so is the bound; a fixed
# bound would be either too loose for d2l or too tight for DenseNet-121.
# Known looseness: the oracle's float32 train-mode gradients of the earliest layers can be far less
# accurate than torch's (d2l 64px, blocks.0.layers.0.conv.weight: 3e-2 vs 1.1e-4), so those keys get
# loose bounds. A conditioning-only derivation (the float64 oracle with inputs and weights perturbed
# by 2^-24) was measured and rejected: it underestimates accumulated rounding ~150x (d2l 64px
# gradients 7.6e-7 vs torch's 1.1e-4).
FLOAT32_SAFETY = 16.0
FLOAT32_FLOOR = {
    "eval": 1e-5,  # ~100 x float32's 2^-24 = 6e-8: depth and accumulation over 3x3xC terms
    "train": 1e-5,
    "loss": 1e-5,
    "eval_grad": 1e-5,
    "train_grad": 1e-4,
    "step": 1e-6,  # params after a step are O(1) and change by lr * grad: rounding of O(1) values
}


# A gradient 1000x smaller than the family's largest is measured at 1e-3 of the largest (see above).
GRAD_FLOOR = 1e-3


def family(key: str) -> str:
    return key.split("/", 1)[0]


def is_exact_zero(key: str) -> bool:
    """Train-mode gradients of conv biases are exactly zero (see module docstring)."""
    return key.startswith("train_grad/") and ".conv" in key and key.endswith(".bias")
