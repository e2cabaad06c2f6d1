"""Whole networks, selected by the `model` key of a variant.

Every network ends in a softmax Dense layer named "head": transfer (`transfer_weights`) copies
every layer but that one, so a pretrained network gets a fresh classifier for its new classes.
"""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np
from keras import layers

from ablations.config import Network, Variant
from ablations.errors import ConfigError, DataError
from ablations.io import sha256_file
from ablations.models.blocks import conv_block, dense_block, norm_activation, weight_options
from ablations.models.network import ablate, own_network

HEAD = "head"


def _inputs(cfg: Variant, input_shape: tuple[int, ...]):
    """(Input, tensor after the optional input BatchNorm and input dropout)."""
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    if cfg.input_norm:
        x = layers.BatchNormalization(name="input_bn")(x)
    if cfg.input_dropout:
        x = layers.Dropout(cfg.input_dropout, name="input_dropout")(x)
    return inputs, x


def _pooling(cfg: Variant) -> str | None:
    """A keras.applications backbone pools inside itself by default (cfg.features None)."""
    return "avg" if cfg.features is None else None


def _features(x, cfg: Variant, default: str | None = None):
    """The map → vector step before the dense part: Flatten or global average/max pooling
    (cfg.features; None: `default`, or nothing when a backbone pooled already)."""
    kind = cfg.features or default
    if kind is None:
        return x
    if kind == "flatten":
        return layers.Flatten(name="flatten")(x)
    pool = layers.GlobalAveragePooling2D if kind == "avg" else layers.GlobalMaxPooling2D
    return pool(name=f"global_{kind}_pool")(x)


def _classifier(x, cfg: Variant, num_classes: int):
    """Dense blocks → the softmax "head". cfg.dropout_at says where dropout goes: "features"
    before the first dense layer, "hidden" after each hidden dense layer (before the next one
    or the head); with "output" in cfg.norm_at the head is Dense → BatchNorm → softmax."""
    for index, units in enumerate(cfg.dense_units, start=1):
        where = "features" if index == 1 else "hidden"
        x = dense_block(x, units, cfg, name=f"fc{index}", dropout=where in cfg.dropout_at)
    where = "hidden" if cfg.dense_units else "features"
    if cfg.dropout and where in cfg.dropout_at:
        x = layers.Dropout(cfg.dropout, name="head_dropout")(x)
    if "output" not in cfg.norm_at or cfg.norm == "none":
        return layers.Dense(num_classes, activation="softmax", name=HEAD,
                            **weight_options(cfg, dense=True))(x)
    x = layers.Dense(num_classes, name=HEAD, **weight_options(cfg, dense=True))(x)
    return norm_activation(x, cfg, HEAD, "output", "softmax")


def _check_size(x, input_shape, block: int) -> None:
    # Keras would build a network with empty feature maps and fail only when fed data; a
    # ValueError is what `ablations validate` reports as "the model cannot take these images".
    if min(x.shape[1:3]) < 1:
        raise ValueError(f"images of {input_shape} shrink to nothing after conv block {block}")


def _per_conv(cfg: Variant, key: str, default: list) -> list:
    values = getattr(cfg, key)
    if values is None:
        return default
    if len(values) != len(cfg.conv_filters):
        raise ConfigError(f"{key}: one entry per conv layer, {len(cfg.conv_filters)} "
                          f"(conv_filters {cfg.conv_filters}), got {values}")
    return list(values)


def _conv_stack(cfg: Variant, input_shape, kernels: list, pooled: list):
    inputs, x = _inputs(cfg, input_shape)
    kernels = _per_conv(cfg, "conv_kernels", kernels)
    strides = _per_conv(cfg, "conv_strides", [1] * len(cfg.conv_filters))
    pooled = _per_conv(cfg, "conv_pooled", pooled)
    names = _per_conv(cfg, "conv_names", [f"block{i}" for i in range(1, len(kernels) + 1)])
    for index, (filters, kernel, stride, pool, name) in enumerate(
            zip(cfg.conv_filters, kernels, strides, pooled, names, strict=True), start=1):
        x = conv_block(x, filters, cfg, name=name, kernel_size=kernel, pool=pool, strides=stride)
        _check_size(x, input_shape, index)
    return inputs, _features(x, cfg, "flatten")


def cnn(cfg: Variant, input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """Input [BN] [dropout] → conv blocks → flatten → dense blocks → softmax head.

    Covers the small CNN of the batchnorm study, the BN-placement net and LeNet-5
    (kernel_size 5, padding valid, conv_filters [6, 16], dense_units [120, 84]).
    """
    count = len(cfg.conv_filters)
    inputs, x = _conv_stack(cfg, input_shape, [cfg.kernel_size] * count, [True] * count)
    return keras.Model(inputs, _classifier(x, cfg, num_classes), name=cfg.model)


ALEXNET_KERNELS = (None, 5, 3, 3, 3)  # None: cfg.kernel_size
ALEXNET_POOLED = (True, True, False, False, True)


def alexnet(cfg: Variant, input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """AlexNet: 5 conv layers (kernels k, 5, 3, 3, 3 unless cfg.conv_kernels) with 2x2 pooling
    after the 1st, 2nd and 5th (unless cfg.conv_pooled), then dense blocks and the head.

    Notebook 001's first conv is 11x11 at stride 4 (conv_kernels, conv_strides): on 32x32 it
    leaves an 8x8 map and a 1x1 map before the dense layers; with every stride 1 (the default)
    all five convs see a spatial map: 32 → 16 → 8 → 4. Widths come from cfg.conv_filters
    (AlexNet: 96, 256, 384, 384, 256).
    """
    if len(cfg.conv_filters) != len(ALEXNET_KERNELS):
        raise ConfigError(f"conv_filters: alexnet has {len(ALEXNET_KERNELS)} conv layers "
                          f"(got {len(cfg.conv_filters)}: {cfg.conv_filters})")
    kernels = [kernel or cfg.kernel_size for kernel in ALEXNET_KERNELS]
    inputs, x = _conv_stack(cfg, input_shape, kernels, list(ALEXNET_POOLED))
    return keras.Model(inputs, _classifier(x, cfg, num_classes), name=cfg.model)


def resnet50(cfg: Variant, input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """Keras' ResNet50 (random initialization, global average pooling) + dense head.

    The backbone is one nested layer named "resnet50" (its own initializers and BatchNorm;
    cfg.conv_filters, kernel_size, padding are not used); cfg's activation, norm, dropout,
    initializer and regularizers apply to the dense layers. weights=None accepts any channel
    count; Keras requires images of at least 32x32.
    """
    inputs, x = _inputs(cfg, input_shape)
    backbone = keras.applications.ResNet50(weights=None, include_top=False,
                                           input_shape=input_shape, pooling=_pooling(cfg))
    x = _features(backbone(x), cfg)
    return keras.Model(inputs, _classifier(x, cfg, num_classes), name=cfg.model)


# Xception's ImageNet weights were learnt on 299x299 images and it needs at least 71x71; the
# notebook upsamples CIFAR-10 7x (32 → 224), which is what this target size gives.
XCEPTION_SIZE = 224


def verified_weights(path: str | Path, sha256: str | None) -> Path:
    """`path` if the file exists and its sha256 is `sha256`; a wrong file (a truncated
    download, another model's weights) must never be loaded silently."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"weights_file {path}: not found")
    actual = sha256_file(path)
    if sha256 is None:
        raise ConfigError(f"weights_file {path}: weights_sha256 is required "
                          f"(this file's sha256 is {actual})")
    if actual != sha256.strip().lower():
        raise ConfigError(f"weights_file {path}: sha256 is {actual}, "
                          f"weights_sha256 expects {sha256}")
    return path


def xception(cfg: Variant, input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """Keras' Xception on images upsampled to about 224x224 (nearest neighbour, as the
    notebook's UpSampling2D), gray images repeated to 3 channels, + dense head.

    cfg.weights_file: ImageNet "notop" weights (xception_weights_tf_dim_ordering_tf_kernels_
    notop.h5) or a Keras .weights.h5 of the backbone, checked against cfg.weights_sha256; with
    cfg.freeze the backbone stays fixed (notebook 002: frozen backbone, new head). ImageNet
    weights expect pixels in [-1, 1] (data scaling minus_one_one).
    """
    height, width, channels = input_shape
    if channels not in (1, 3):
        raise ConfigError(f"xception takes 1- or 3-channel images (got {input_shape})")
    weights = None
    if cfg.weights_file is not None:  # checked before the slow build: a wrong file fails at once
        weights = verified_weights(cfg.weights_file, cfg.weights_sha256)
    inputs, x = _inputs(cfg, input_shape)
    factors = (math.ceil(XCEPTION_SIZE / height), math.ceil(XCEPTION_SIZE / width))
    x = layers.UpSampling2D(factors, name="upsample")(x)
    if channels == 1:  # a plain layer, not a Lambda: models load with safe_mode=True
        x = layers.Concatenate(name="gray_to_rgb")([x, x, x])
    backbone = keras.applications.Xception(
        weights=None, include_top=False, input_shape=(*x.shape[1:3], 3), pooling=_pooling(cfg))
    if weights is not None:
        try:
            backbone.load_weights(weights)
        except (ValueError, OSError) as error:
            raise ConfigError(f"weights_file {weights}: not Xception backbone weights: "
                              f"{str(error).splitlines()[0]}") from None
    backbone.trainable = not cfg.freeze
    x = _features(backbone(x), cfg)
    return keras.Model(inputs, _classifier(x, cfg, num_classes), name=cfg.model)


# Variant keys that change how a network trains but not its layers: networks that differ only
# in these are built once by `validate` and `describe`.
TRAINING_ONLY = {"data", "initializer", "dense_initializer", "kernel_regularizer",
                 "bias_regularizer", "bn_momentum", "optimizer", "learning_rate",
                 "optimizer_config", "lr_schedule", "epochs", "batch_size", "init_from",
                 "transfer_mismatch", "weights", "weights_file", "weights_sha256",
                 "mixed_precision",
                 "seed"}


def structure_only(cfg: Variant) -> Variant:
    """`cfg` without pretrained weights: the same layers and counts (`validate`, `describe`
    run before the weights are provisioned)."""
    return cfg.model_copy(update={"weights_file": None})


def build_structure(cfg: Variant, input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """`build_model(structure_only(cfg), …)` with every layer, output shape and parameter
    count but no weight values (`validate`): inside a StatelessScope that does not initialize
    them, Keras creates the variables with their shapes only and skips the random draws, most
    of a large network's build time (ResNet50: docs/performance.md). A network that cannot
    take the images raises the same ValueError as when its weights are drawn. Values read from
    it are placeholders: not for training, saving or transfer. Your own network is built as
    training builds it: its file's weights or its builder's code may read values."""
    if isinstance(cfg.model, Network):
        return build_model(structure_only(cfg), input_shape, num_classes)
    with keras.StatelessScope(initialize_variables=False):
        return build_model(structure_only(cfg), input_shape, num_classes)


def architecture(cfg: Variant, input_shape: tuple[int, ...]) -> str:
    """A key equal for variants whose networks have the same layers on the same images."""
    return f"{input_shape} {cfg.model_dump_json(exclude=TRAINING_ONLY)}"


BUILDERS = {"cnn": cnn, "alexnet": alexnet, "resnet50": resnet50, "xception": xception}


def build_model(cfg: Variant, input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    if isinstance(cfg.model, Network):  # its layers (BatchNorm momentum included) are its own
        return own_network(cfg, input_shape, num_classes)
    model = ablate(BUILDERS[cfg.model](cfg, input_shape, num_classes), cfg)
    # One place for every BatchNorm, those inside keras.applications backbones included
    # (built with Keras' 0.99): the momentum is only read when the layer is called.
    for layer in model._flatten_layers(include_self=False):  # noqa: SLF001 (Keras' own walk)
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = cfg.bn_momentum
    return model


def _shapes(weights) -> list[list[int]]:
    return [list(weight.shape) for weight in weights]


def _spreadable(source: list[list[int]], target: list[list[int]]) -> bool:
    """Conv weights that differ only in the kernel's input channels (axis 2)."""
    def without_channels(shape: list[int]) -> list[int]:
        return shape[:2] + shape[3:]

    return (len(source) == len(target) and len(source[0]) == len(target[0]) == 4
            and without_channels(source[0]) == without_channels(target[0])
            and source[1:] == target[1:])


def transfer_plan(source: keras.Model, target: keras.Model, cfg: Variant) -> list[tuple]:
    """(name, weight shapes, rule) of every target layer that takes the weights of the
    same-named source layer: all but the head (unless cfg.copy_head). A layer whose shapes
    differ follows cfg.transfer_mismatch; it is never skipped silently."""
    plan = []
    for layer in target.layers:
        if (layer.name == HEAD and not cfg.copy_head) or not layer.weights:
            continue
        try:
            source_shapes = _shapes(source.get_layer(layer.name).weights)
        except ValueError:  # no layer of that name in the source: trained from scratch
            continue
        target_shapes = _shapes(layer.weights)
        if source_shapes == target_shapes:
            plan.append((layer.name, target_shapes, "copied"))
        elif (cfg.transfer_mismatch == "spread_channels"
              and _spreadable(source_shapes, target_shapes)):
            plan.append((layer.name, target_shapes, "spread_channels"))
        else:
            raise ConfigError(
                f"transfer_mismatch: layer {layer.name!r} has weights {source_shapes} in "
                f"{source.name!r} but {target_shapes} here; allowed: transfer_mismatch "
                "spread_channels (a conv kernel on other input channels), or another layer name "
                "(conv_names) to train it from scratch")
    if not plan:
        raise ConfigError(f"init_from: no layer of model {source.name!r} matches a layer of "
                          f"{target.name!r} by name (the head is copied only with copy_head)")
    return plan


def _spread(kernel: np.ndarray, channels: int) -> np.ndarray:
    """Sum over the input channels, spread evenly over `channels`: same response to gray input."""
    summed = kernel.sum(axis=2, keepdims=True) / channels
    return np.repeat(summed, channels, axis=2)


def transfer_weights(source: keras.Model, target: keras.Model, cfg: Variant) -> list[dict]:
    """Copy the weights `transfer_plan` lists from `source` into `target`; with cfg.freeze the
    copied layers stop training (BatchNorm then also keeps its moving statistics). Call before
    `compile`. Returns {name, shapes, rule, frozen} per copied layer, for run.json and MLflow."""
    copied = []
    for name, shapes, rule in transfer_plan(source, target, cfg):
        values = source.get_layer(name).get_weights()
        if rule == "spread_channels":
            values = [_spread(values[0], shapes[0][2]), *values[1:]]
        layer = target.get_layer(name)
        layer.set_weights(values)
        if cfg.freeze:
            layer.trainable = False
        copied.append({"name": name, "shapes": shapes, "rule": rule, "frozen": cfg.freeze})
    return copied
