"""Building blocks whose layer order is a parameter (Keras `resnet.py` style: tensor in, tensor out).

Names are resolved with Keras' own `get` functions, so any Keras identifier works in params.yaml:
`activation: elu` or `activation: {class_name: LeakyReLU, config: {negative_slope: 0.1}}`.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import layers

from ablations.config import KerasId, Variant, excerpt, shorten
from ablations.errors import ConfigError


def _resolve(kind: str, getter, identifier: Any):
    try:
        return getter(identifier)
    except (ValueError, TypeError, KeyError) as error:
        reason = shorten(str(error).splitlines()[0] if str(error) else type(error).__name__, 200)
        raise ConfigError(f"{kind}={excerpt(identifier)} is not a Keras {kind}: {reason}") from None


def activation_layer(identifier: KerasId, name: str) -> layers.Layer:
    """An activation as its own layer, so norm placement around it is explicit."""
    if isinstance(identifier, dict):  # a serialized layer, e.g. LeakyReLU with its slope
        config = {**identifier, "config": {**identifier.get("config", {}), "name": name}}
        config.setdefault("module", "keras.layers")
        return _resolve("activation", layers.deserialize, config)
    return layers.Activation(_resolve("activation", keras.activations.get, identifier), name=name)


def weight_options(cfg: Variant, dense: bool = False) -> dict[str, Any]:
    """Initializer and regularizers for a Conv2D/Dense layer (fresh objects per layer);
    a dense layer takes cfg.dense_initializer when it is set."""
    reg = keras.regularizers.get
    initializer = cfg.dense_initializer if dense and cfg.dense_initializer else cfg.initializer
    init = keras.initializers.get
    return {
        "kernel_initializer": _resolve("initializer", init, initializer),
        "bias_initializer": _resolve("initializer", init,
                                     initializer if cfg.init_biases else "zeros"),
        "kernel_regularizer": _resolve("kernel_regularizer", reg, cfg.kernel_regularizer),
        "bias_regularizer": _resolve("bias_regularizer", reg, cfg.bias_regularizer),
    }


def norm_activation(x, cfg: Variant, name: str, where: str = "conv", activation=None):
    """BatchNorm before or after the activation (or none), as `cfg.norm` says, if `where`
    (conv, dense, output) is one of cfg.norm_at."""
    norm = cfg.norm if where in cfg.norm_at else "none"
    if norm == "before":
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
    x = activation_layer(activation or cfg.activation, name=f"{name}_act")(x)
    if norm == "after":
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return x


POOLS = {"max": layers.MaxPooling2D, "average": layers.AveragePooling2D}


def conv_block(x, filters: int, cfg: Variant, name: str, kernel_size: int | None = None,
               pool: bool = True, strides: int = 1):
    """The parts of cfg.conv_order in that order: conv, pool (2x2, cfg.pooling), act (with
    BatchNorm before or after it per cfg.norm) and dropout (cfg.conv_dropout, at the end of
    the block when conv_order does not place it); `kernel_size` defaults to cfg's.

    conv → pool → act (the laptop default): max-pooling commutes with monotone activations
    (ReLU, tanh, ELU, LeakyReLU), so the function is conv → act → pool's while BatchNorm and the
    activation run on a map 4x smaller (BN is the costly op on CPU). The notebooks normalize
    before pooling (conv_order [conv, act, pool]); with BatchNorm that is another function.
    """
    order = list(cfg.conv_order)
    if cfg.conv_dropout and "dropout" not in order:
        order.append("dropout")
    for part in order:
        if part == "conv":
            x = layers.Conv2D(
                filters, kernel_size or cfg.kernel_size, strides=strides, padding=cfg.padding,
                use_bias=cfg.conv_bias, name=f"{name}_conv", **weight_options(cfg))(x)
        elif part == "pool" and pool:
            x = POOLS[cfg.pooling](2, padding=cfg.pool_padding, name=f"{name}_pool")(x)
        elif part == "act":
            x = norm_activation(x, cfg, name, "conv")
        elif part == "dropout" and cfg.conv_dropout:
            x = layers.Dropout(cfg.conv_dropout, name=f"{name}_dropout")(x)
    return x


def residual_block(x, filters: int, cfg: Variant, name: str, strides: int = 1):
    """A basic residual block (He et al. 2016, two 3x3 convs): the first conv's block follows
    cfg.conv_order (its pool left out, BatchNorm per cfg.norm), the second conv is followed by
    BatchNorm only (if any), then the shortcut is added and the activation applied after the
    sum. The shortcut is the identity, or a 1x1 conv (and BatchNorm) where the stride or the
    width changes."""
    shortcut = x
    x = conv_block(x, filters, cfg, name=f"{name}a", pool=False, strides=strides)
    x = layers.Conv2D(filters, cfg.kernel_size, padding="same", use_bias=cfg.conv_bias,
                      name=f"{name}b_conv", **weight_options(cfg))(x)
    with_norm = cfg.norm != "none" and "conv" in cfg.norm_at
    if with_norm:
        x = layers.BatchNormalization(name=f"{name}b_bn")(x)
    if strides != 1 or shortcut.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=strides, use_bias=cfg.conv_bias,
                                 name=f"{name}_shortcut_conv", **weight_options(cfg))(shortcut)
        if with_norm:
            shortcut = layers.BatchNormalization(name=f"{name}_shortcut_bn")(shortcut)
    x = layers.Add(name=f"{name}_add")([x, shortcut])
    return activation_layer(cfg.activation, name=f"{name}_act")(x)


def dense_block(x, units: int, cfg: Variant, name: str, dropout: bool):
    """[Dropout] → Dense → norm/activation (cfg.dense_activation, else cfg.activation)."""
    if dropout and cfg.dropout:
        x = layers.Dropout(cfg.dropout, name=f"{name}_dropout")(x)
    x = layers.Dense(units, use_bias=cfg.dense_bias, name=f"{name}_dense",
                     **weight_options(cfg, dense=True))(x)
    return norm_activation(x, cfg, name, "dense", cfg.dense_activation)


def build_optimizer(cfg: Variant, steps_per_epoch: int = 1) -> keras.optimizers.Optimizer:
    rate = cfg.learning_rate
    if cfg.lr_schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(rate, decay_steps=steps_per_epoch * cfg.epochs)
    config = {"learning_rate": rate, **cfg.optimizer_config}
    return _resolve("optimizer", keras.optimizers.get, {"class_name": cfg.optimizer, "config": config})
