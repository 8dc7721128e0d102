"""Every tolerance in the project, in one place, with the reason for each number.

Error measure: relative max error, max|a - b| / max|b| (b the reference: the oracle, or the second
framework of a pair), computed per tensor. Two exceptions for gradients, both named:
- keys whose exact value is zero (train-mode gradients of a conv bias: every conv output in a
  DenseNet reaches the loss only through a train-mode BatchNorm, whose batch-mean subtraction
  cancels any constant shift, so d loss / d bias = 0 exactly) are measured against the largest
  gradient of the same family, since their computed values are pure rounding noise;
- any other gradient tensor is measured against max(its own largest entry, GRAD_FLOOR x the family's
  largest). Cancellation makes some gradients nearly zero depending on the data: the stem BN's beta
  when the max-pool passes every value of a channel (the next train-mode BNs cancel the shift),
  its gamma nearly so. Their relative error is rounding noise, not semantics.
float32 gradients (eval_grad/, train_grad/ keys other than the exact zeros) are measured against
their rounding scale instead: max|a - b| / max(S), with S = reference.gradient_scales, each
entry's last sum (sum(dy * xhat) for a BN's gamma, sum(dy * x) for a conv weight, the transposed
conv for the input) taken over |terms|. Rounding a sum errs by up to (terms) x 2^-24 x S however
much the terms cancel, so S, not the value, is the size of a correct float32 gradient's error: d2l
stem.norm.weight's terms cancel 10^4-fold (every consumer of the stem is a train-mode BN), and
its error relative to its value was 2.2e-3 for a correct MXNet. S comes from the float64 oracle on
its own pieces (pieces.rounding_scales) and is one number per key, the same for the oracle's own
float32 error (compare.DerivedErrors carries it) and for the frameworks': error <= 16 x e32 holds
in either unit, so the verdicts are the |value| measure's; only the floor is restated
(FLOAT32_SCALE_FLOOR, 16 roundings of S instead of 1e-4 of the value). Measured (float32, batch 2,
seed 0), the largest train-gradient bound: d2l 96px 2.7e-5 (its exactly-zero conv-bias gradients,
measured as before, 1e-4: the floor), DenseNet-121 64px 9.1e-4 (block 4,
8 values per BN channel), BC-100 32px 4.7e-5; under the |value| measure d2l's and DenseNet-121's
were 2.2e-3 and 1.2e-3.
float64 keeps the |value| measure (its bounds are constants, 1e-9, and tighter that way).
"step/" keys (parameters after an update) are O(1) tensors and compared as they are, with one
float32 rule: a parameter whose gradient is exactly zero (conv biases) moves only by weight decay
and by its gradient's rounding noise, which differs between kernels by orders of magnitude
(MXNet's conv bias gradient noise is ~50x the oracle's). Its float32 bound adds that noise carried
through the steps: lr * sum_k (1 - m^k) / (1 - m) * (train_grad bound * largest gradient)
/ max|param| (compare.float32_step_allowance).
Float32 gradients and linear pieces (pieces.py). The network is piecewise linear in what ReLU and
max-pool decide, and float32 train-mode gradients jump between pieces: a BatchNorm output within
float32 rounding of 0 flips the following ReLU's mask in whichever implementation's rounding
crosses 0, and every gradient backward reaches after it changes by that entry's upstream gradient,
by far more than rounding (DenseNet-121, 64x64, batch 2, seed 0: of 690,176 BN outputs in blocks
2-3, 1 has |y| < 1e-6, 6 |y| < 1e-5, 57 |y| < 1e-4; a JAX flip moved norm1.bias by 1.8e-2, an
MXNet flip by 0.15 and 127 tensors after it). So each framework reports every BatchNorm output of
its gradient passes (eval_piece/, train_piece/), the float64 oracle recomputes eval_grad/,
train_grad/ and the first SGD step on that framework's own piece, and the float32 bound below is
applied to the difference: rounding alone. e32 for those keys is itself measured on a piece: the
float32 oracle against the float64 oracle on the float32 oracle's own piece (which differed from
the float64 piece in 2 train-mode ReLU entries on the DenseNet-121 case above), so neither side of
the bound holds a kink. Pairs of frameworks are compared through the oracle: a + (oracle on b's
piece - oracle on a's piece) against b.
The ReLU-kink fallback (kinks.py), only for a framework whose adapter says it cannot report its
piece (Adapter.pieces_unavailable, with the reason shown in the report): train_grad/ and step/ keys
get an allowance for every flip rounding could make.
- near-kink: an entry of a train-mode ReLU input with |y| < FLOAT32_SAFETY x the oracle's own
  float32 error (max-abs over that ReLU input, float32 forward against float64);
- the float64 oracle's train-mode gradients are recomputed twice, with every near-kink derivative
  forced to 1 and then to 0; key k's allowance is max(|g_on - g| + |g_off - g|) over its entries,
  divided by k's rel_errors denominator, and step/<p> gets it carried like the conv-bias rule.
  Exact for one flipped entry, not a proof for a subset of several; loose where many entries are
  near (DenseNet-121 above: median 0.13, largest 0.69): with it a float32 train_grad difference of
  a few % is not a verdict, which is why it is only the fallback.
SGD steps too: each framework reports the piece of every step's forward (step_piece/<k>/), and the
float64 trajectory is recomputed with step k on that piece, so flips anywhere in K steps are not
mistaken for errors (before, steps after the first took the oracle's own pieces, and a flip there
was a jump no rounding bound covers). Known limits of the piece rule: a framework's train step must
take the same piece as its train-mode gradient pass on the same state (the same forward
computation; the driver reads a step's piece from that pass); exact ties between positive float32
values in a max-pool window are assumed to go to the first maximum.
"""

from __future__ import annotations

# float64: semantics. Two correct float64 implementations differ by rounding alone, ~1e-16 per op,
# grown by accumulation and depth: measured torch/MXNet vs oracle, worst over every stage, <= 6e-14
# forward, <= 2e-12 gradients, <= 3e-13 after a step (d2l 96px, DenseNet-121 64px, BC-100, tiny).
# 1e-10 / 1e-9 leave >= 500x margin and still catch any semantic difference (eps 1e-3 instead of
# 1e-5: 2e-3; 'same' stem padding: 0.17; biased running variance: 1e-2).
# Conditioning limit: a train-mode BatchNorm that sees 2 values per channel (DenseNet-121 at 32x32,
# batch 2: the last block is 1x1) amplifies rounding so much that torch against itself with
# channels_last differs by 1.6e-8 (train) and 4e-7 (gradients). Parity cases keep at least 2x2 at
# the last block (DenseNet-121 at >= 64x64); eval mode has no such limit.
FLOAT64 = {
    "eval": 1e-10,
    "train": 1e-10,
    "loss": 1e-10,
    "eval_grad": 1e-9,  # backward sums over the batch and spatial positions: one more accumulation
    "train_grad": 1e-9,
    "step": 1e-9,
    "eval_piece": 1e-10,  # BatchNorm outputs (the ReLU inputs of the gradient passes): forwards
    "train_piece": 1e-10,
    "step_piece": 1e-9,  # the same in each SGD step: forwards on weights after steps (as "step")
}

# float32: rounding. The bound for a key is max(FLOAT32_FLOOR[q], FLOAT32_SAFETY * e32[key]),
# where e32[q] is the error of the NumPy oracle computed in float32 against itself in float64 on the
# same case: an independent float32 implementation's own rounding error on exactly this input. Two
# float32 implementations each make an error of that size with different accumulation orders
# (BLAS blocking, oneDNN, Winograd), so their difference is at most a small multiple of it.
# Train-mode BN backward is ill-conditioned where a BatchNorm sees few values per channel
# (batch x 1 x 1 at the head of DenseNet-121): e32 is large there and so is the bound; a fixed
# bound would be either too loose for d2l or too tight for DenseNet-121.
# The oracle's float32 run is an ordinary float32 implementation (measured on pieces, issue 24):
# framework error / e32 over every train_grad key, median (max): d2l 96px torch 0.91 (1.45), JAX
# 1.06 (1.86), TF 1.16 (3.25), MXNet 2.40 (13.4); DenseNet-121 64px torch 0.76 (1.69), JAX 1.08
# (2.30), TF 0.89 (2.13), MXNet 1.30 (8.46). Per op its conv (BLAS sgemm via tensordot) is as
# accurate as torch's oneDNN one (1x1 conv 1024->128 at 2x2: 3.5e-7 vs 2.8e-7 against float64), and
# its reductions are NumPy's pairwise sums over the contiguous H*W. Measured against |value| (the
# numbers below), bounds above 1e-3 were ill-conditioned gradients, not an inaccurate oracle; that
# is why float32 gradients are measured against their rounding scale (module docstring):
# - d2l stem.norm.weight (e32 1.4e-4, bound 2.2e-3): every consumer of the stem is a train-mode BN,
#   which cancels a per-channel scale, so sum(dy * xhat) is ~1e4 times smaller than sum|dy * xhat|
#   (its largest entry is 5e-4 of the family's: measured at GRAD_FLOOR). Errors: torch 1.9e-4, JAX
#   1.8e-4, TF 4.5e-4, MXNet 1.6e-3 (its BN backward sums; stem.norm.bias 3.4e-4, 13x e32): a bound
#   under 1e-3 there would fail a correct MXNet.
# - DenseNet-121 64px (bounds 1.0e-3 to 1.2e-3: stem.norm.weight as above, e32 6.9e-5; four
#   blocks.3.* and blocks.1.layers.9.conv1.weight, e32 6.5e-5 to 7.7e-5): the forward convs'
#   float32 accumulation (up to 1152 terms), amplified by the train-mode BNs after them (8 values
#   per channel in block 4). With correctly rounded forward convs (float64, rounded once) the
#   oracle's e32 there drops ~8x (blocks.3.layers.6.conv1.weight 7.7e-5 -> 8.2e-6); with its conv
#   backward correctly rounded it stays 7.7e-5, with its BNs 5.6e-5. Frameworks on those keys:
#   2.8e-5 to 9.1e-5 (stem.norm.weight: 9.3e-5 to 5.8e-4).
# e32 of such a key is one draw of the rounding: another ordinary order of the same sums moved d2l
# stem.norm.weight's from 1.4e-4 to 2.9e-4. Making the oracle more accurate than ordinary kernels
# (compensated sums, float64 accumulation) would lower these bounds below what the frameworks'
# kernels achieve, so it is not done. A conditioning-only derivation (the float64 oracle with inputs
# and weights perturbed by 2^-24) was measured and rejected: it underestimates accumulated rounding
# ~150x (d2l 64px gradients 7.6e-7 vs torch's 1.1e-4).
FLOAT32_SAFETY = 16.0
FLOAT32_FLOOR = {
    "eval": 1e-5,  # ~100 x float32's 2^-24 = 6e-8: depth and accumulation over 3x3xC terms
    "train": 1e-5,
    "loss": 1e-5,
    "eval_grad": 1e-5,
    "train_grad": 1e-4,
    "step": 1e-6,  # params after a step are O(1) and change by lr * grad: rounding of O(1) values
    "eval_piece": 1e-5,
    "train_piece": 1e-5,
    "step_piece": 1e-5,
}

# Float32 gradients measured against their rounding scale (see the module docstring): a bound is
# never under FLOAT32_SAFETY roundings (2^-24 each) of that scale.
FLOAT32_SCALE_FLOOR = FLOAT32_SAFETY * 2.0**-24

# A gradient 1000x smaller than the family's largest is measured at 1e-3 of the largest (see above).
GRAD_FLOOR = 1e-3


def family(key: str) -> str:
    return key.split("/", 1)[0]


def is_exact_zero(key: str) -> bool:
    """Train-mode gradients of conv biases are exactly zero (see module docstring)."""
    return key.startswith("train_grad/") and ".conv" in key and key.endswith(".bias")
