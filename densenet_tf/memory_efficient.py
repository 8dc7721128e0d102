"""Memory-efficient dense blocks: backward recomputes each dense layer instead of keeping every
layer's concatenation and activations (Pleiss et al. 2017, "Memory-Efficient Implementation of
DenseNets"). Same numbers as layers.DenseBlock up to rounding; running statistics are updated
once per step, by the forward pass.

Inject it as DenseNet(config, dense_block=MemoryEfficientDenseBlock), or
variants.make_model(config, memory_efficient=True).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from densenet_tf.layers import CHANNEL_AXIS, DenseBlock


class MemoryEfficientDenseBlock(DenseBlock):
    """A DenseBlock under one tf.custom_gradient that keeps the block output, not each layer's
    concatenation and activations.

    Layer j's input is the first w_j channels of the block output, so backward slices it off
    again and reruns the layer on local tapes. Its input gradient joins one running gradient of
    that slice: TF's own backward of the concatenations would hold one gradient per (layer,
    earlier feature map) until their AddN, quadratic in depth (tf.recompute_grad around each
    layer has that problem, and TF runs its weight gradients last). The saving is for
    tf.function: eagerly, tf.custom_gradient leaves the forward on the tape too.

    A layer splits as torch's memory-efficient DenseNet does: norm, relu, conv (the 1x1 conv of
    a bottleneck layer, or the whole conv_block) and the rest. Where the layer's input is at
    least twice as wide as that conv's output, the output is kept: recomputing the conv would
    then be the costly part (the deep blocks), and what is kept is freed before backward
    reaches the first, widest-resolution block, where the peak is.

    The recomputation runs in a keras.StatelessScope, which collects the BatchNorms'
    moving-statistics assignments instead of applying them: the forward pass already did.
    """

    def call(self, x, training=False):
        layers = self.layers

        @tf.custom_gradient
        def block(x):
            saved = []
            for layer in layers:
                first, rest = layer.layers[:3], layer.layers[3:]
                z = _run(first, x, training)
                y = _run(rest, z, training)
                keep = bool(rest) and x.shape[CHANNEL_AXIS] >= 2 * z.shape[CHANNEL_AXIS]
                saved.append((x.shape[CHANNEL_AXIS], first, rest, z if keep else None))
                x = tf.concat([x, y], axis=CHANNEL_AXIS)
            out = x

            def grad(g, variables=()):
                grads = {}  # variable ref -> gradient
                for width, first, rest, z in reversed(saved):
                    # tf.function runs an op as soon as its inputs are ready: without these
                    # control edges every recomputation would run at once, and the weight
                    # gradients last, keeping all the recomputed activations alive together.
                    with tf.control_dependencies([g]):
                        h = out[..., :width]
                    g, dy = g[..., :width], g[..., width:]
                    with keras.StatelessScope():  # running statistics stay as they are
                        with tf.GradientTape() as tape1:
                            tape1.watch(h)
                            z_again = _run(first, h, training)  # z kept: its conv is pruned
                        z = z_again if z is None else z
                        with tf.GradientTape() as tape2:
                            tape2.watch(z)
                            y = _run(rest, z, training)
                    w2 = tape2.watched_variables()
                    dz, *dw2 = tape2.gradient(y, [z, *w2], output_gradients=dy)
                    w1 = tape1.watched_variables()
                    dh, *dw1 = tape1.gradient(z_again, [h, *w1], output_gradients=dz)
                    with tf.control_dependencies(dw1 + dw2):
                        g = g + dh
                    grads.update((v.ref(), d) for v, d in zip(w1 + w2, dw1 + dw2))
                # None for the running statistics, which eval mode reads
                return g, [grads.get(v.ref()) for v in variables]

            return out, grad

        return block(x)


def _run(layers, x, training):
    for layer in layers:
        x = layer(x, training=training)
    return x
