"""Whole networks, selected by the `model` key of a variant."""

from __future__ import annotations

import keras
from keras import layers

from ablations.config import Variant
from ablations.models.blocks import conv_block, dense_block, weight_options


def cnn(cfg: Variant, input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """Input [BN] [dropout] → conv blocks → flatten → dense blocks → [dropout] softmax head.

    Covers the small CNN of the batchnorm study, the BN-placement net and LeNet-5
    (kernel_size 5, padding valid, conv_filters [6, 16], dense_units [120, 84]).
    """
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    if cfg.input_norm:
        x = layers.BatchNormalization(name="input_bn")(x)
    if cfg.input_dropout:
        x = layers.Dropout(cfg.input_dropout, name="input_dropout")(x)
    for index, filters in enumerate(cfg.conv_filters, start=1):
        x = conv_block(x, filters, cfg, name=f"block{index}")
        if min(x.shape[1:3]) < 1:  # Keras would build a network with empty feature maps
            raise ValueError(f"images of {input_shape} shrink to nothing after conv block {index}")
    x = layers.Flatten(name="flatten")(x)
    for index, units in enumerate(cfg.dense_units, start=1):
        x = dense_block(x, units, cfg, name=f"fc{index}")
    if cfg.dropout:
        x = layers.Dropout(cfg.dropout, name="head_dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="head", **weight_options(cfg))(x)
    return keras.Model(inputs, outputs, name=cfg.model)


BUILDERS = {"cnn": cnn}


def build_model(cfg: Variant, input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    return BUILDERS[cfg.model](cfg, input_shape, num_classes)
