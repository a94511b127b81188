"""A torchvision-style ResNet in Equinox, for the anatomy benchmarks.

Stem: 7×7/2 convolution, BatchNorm, ReLU, 3×3/2 max-pool; then stages of bottleneck blocks
(1×1 reduce, 3×3, 1×1 expand ×4, each with BatchNorm; a 1×1/stride projection with BatchNorm on
the first block of a stage), global average pool and a linear classifier. BatchNorm runs in
inference mode from an `eqx.nn.State`, so the model is mapped as
`ns.anatomy(model, x, state, fn=lambda m, x, s: m(x, s)[0])`.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray


def _bn(channels: int) -> eqx.nn.BatchNorm:
    return eqx.nn.BatchNorm(channels, "batch", inference=True, mode="batch")


class Bottleneck(eqx.Module):
    conv1: eqx.nn.Conv2d
    bn1: eqx.nn.BatchNorm
    conv2: eqx.nn.Conv2d
    bn2: eqx.nn.BatchNorm
    conv3: eqx.nn.Conv2d
    bn3: eqx.nn.BatchNorm
    down: eqx.nn.Conv2d | None
    down_bn: eqx.nn.BatchNorm | None

    def __init__(self, cin: int, width: int, stride: int, *, key: PRNGKeyArray):
        k = jax.random.split(key, 4)
        cout = 4 * width
        self.conv1 = eqx.nn.Conv2d(cin, width, 1, use_bias=False, key=k[0])
        self.bn1 = _bn(width)
        self.conv2 = eqx.nn.Conv2d(width, width, 3, stride, 1, use_bias=False, key=k[1])
        self.bn2 = _bn(width)
        self.conv3 = eqx.nn.Conv2d(width, cout, 1, use_bias=False, key=k[2])
        self.bn3 = _bn(cout)
        if stride != 1 or cin != cout:
            self.down = eqx.nn.Conv2d(cin, cout, 1, stride, use_bias=False, key=k[3])
            self.down_bn = _bn(cout)
        else:
            self.down, self.down_bn = None, None

    def __call__(self, x: Float[Array, "c h w"], state: eqx.nn.State):
        h, state = self.bn1(self.conv1(x), state)
        h, state = self.bn2(self.conv2(jax.nn.relu(h)), state)
        h, state = self.bn3(self.conv3(jax.nn.relu(h)), state)
        if self.down is not None and self.down_bn is not None:
            x, state = self.down_bn(self.down(x), state)
        return jax.nn.relu(h + x), state


class ResNet(eqx.Module):
    stem: eqx.nn.Conv2d
    stem_bn: eqx.nn.BatchNorm
    blocks: list[Bottleneck]
    fc: eqx.nn.Linear
    stem_pool: bool = eqx.field(static=True)

    def __init__(
        self, layers=(3, 4, 6, 3), classes: int = 1000, stem_pool: bool = True, *, key: PRNGKeyArray
    ):
        self.stem_pool = stem_pool
        keys = iter(jax.random.split(key, sum(layers) + 2))
        self.stem = eqx.nn.Conv2d(3, 64, 7, 2, 3, use_bias=False, key=next(keys))
        self.stem_bn = _bn(64)
        blocks, cin = [], 64
        for stage, n in enumerate(layers):
            width = 64 * 2**stage
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(Bottleneck(cin, width, stride, key=next(keys)))
                cin = 4 * width
        self.blocks = blocks
        self.fc = eqx.nn.Linear(cin, classes, key=next(keys))

    def __call__(self, x: Float[Array, "3 h w"], state: eqx.nn.State):
        x, state = self.stem_bn(self.stem(x), state)
        x = jax.nn.relu(x)
        if self.stem_pool:  # (without it: the layout an anatomy that cannot pool can map)
            x = eqx.nn.MaxPool2d(3, 2, padding=1)(x)
        for block in self.blocks:
            x, state = block(x, state)
        return self.fc(jnp.mean(x, axis=(1, 2))), state


def resnet50(key: PRNGKeyArray, stem_pool: bool = True) -> tuple[ResNet, eqx.nn.State]:
    return eqx.nn.make_with_state(ResNet)(stem_pool=stem_pool, key=key)
