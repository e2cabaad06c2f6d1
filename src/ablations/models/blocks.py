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


def weight_options(cfg: Variant) -> dict[str, Any]:
    """Initializer and regularizers for a Conv2D/Dense layer (fresh objects per layer)."""
    reg = keras.regularizers.get
    return {
        "kernel_initializer": _resolve("initializer", keras.initializers.get, cfg.initializer),
        "kernel_regularizer": _resolve("kernel_regularizer", reg, cfg.kernel_regularizer),
        "bias_regularizer": _resolve("bias_regularizer", reg, cfg.bias_regularizer),
    }


def norm_activation(x, cfg: Variant, name: str):
    """BatchNorm before or after the activation (or none), as `cfg.norm` says."""
    if cfg.norm == "before":
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
    x = activation_layer(cfg.activation, name=f"{name}_act")(x)
    if cfg.norm == "after":
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return x


def conv_block(x, filters: int, cfg: Variant, name: str, kernel_size: int | None = None,
               pool: bool = True):
    """Conv2D → [2x2 max-pooling] → norm/activation; `kernel_size` defaults to cfg's.

    Pooling first: max-pooling commutes with monotone activations (ReLU, tanh, ELU, LeakyReLU),
    so the function is the same as conv → activation → pool while BatchNorm and the activation
    run on a map 4x smaller (BN is the costly op on CPU). Notebook 000 also normalizes after
    pooling.
    """
    x = layers.Conv2D(
        filters, kernel_size or cfg.kernel_size, padding=cfg.padding, use_bias=cfg.conv_bias,
        name=f"{name}_conv", **weight_options(cfg),
    )(x)
    if pool:
        x = layers.MaxPooling2D(2, name=f"{name}_pool")(x)
    return norm_activation(x, cfg, name)


def dense_block(x, units: int, cfg: Variant, name: str):
    """Dropout (if any) → Dense → norm/activation: dropout sits before each dense layer."""
    if cfg.dropout:
        x = layers.Dropout(cfg.dropout, name=f"{name}_dropout")(x)
    x = layers.Dense(units, name=f"{name}_dense", **weight_options(cfg))(x)
    return norm_activation(x, cfg, name)


def build_optimizer(cfg: Variant, steps_per_epoch: int = 1) -> keras.optimizers.Optimizer:
    rate = cfg.learning_rate
    if cfg.lr_schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(rate, decay_steps=steps_per_epoch * cfg.epochs)
    config = {"learning_rate": rate, **cfg.optimizer_config}
    return _resolve("optimizer", keras.optimizers.get, {"class_name": cfg.optimizer, "config": config})
