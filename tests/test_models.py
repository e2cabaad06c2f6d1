"""The model builder puts layers in the configured order and attaches named initializers."""

import hashlib

import h5py
import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format  # writes the ImageNet files' HDF5 layout

from ablations.config import Variant
from ablations.errors import ConfigError, DataError
from ablations.models.blocks import build_optimizer
from ablations.models.zoo import build_model, build_structure, transfer_weights, verified_weights

BASE = dict(conv_filters=[4, 8], dense_units=[16], epochs=1, batch_size=8)


def layer_types(model):
    return [type(layer).__name__ for layer in model.layers]


def test_batchnorm_before_activation_and_dropout_before_dense():
    cfg = Variant(**BASE, norm="before", dropout=0.5, activation="tanh")
    names = [layer.name for layer in build_model(cfg, (12, 12, 1), 3).layers]
    assert names.index("block1_pool") == names.index("block1_conv") + 1
    assert names.index("block1_bn") == names.index("block1_pool") + 1
    assert names.index("block1_act") == names.index("block1_bn") + 1
    assert names.index("fc1_dropout") == names.index("fc1_dense") - 1
    assert names.index("head_dropout") == names.index("head") - 1
    act = build_model(cfg, (12, 12, 1), 3).get_layer("fc1_act")
    assert act.activation is keras.activations.tanh


def test_batchnorm_after_activation_and_none():
    after = build_model(Variant(**BASE, norm="after"), (12, 12, 1), 3)
    names = [layer.name for layer in after.layers]
    assert names.index("block2_bn") == names.index("block2_act") + 1
    plain = build_model(Variant(**BASE), (12, 12, 1), 3)
    assert "BatchNormalization" not in layer_types(plain)
    assert "Dropout" not in layer_types(plain)


def names_of(model):
    return [layer.name for layer in model.layers]


@pytest.mark.parametrize(("order", "norm", "expected"), [
    # conv_dropout > 0: dropout where the order says, else at the end of the block
    (["conv", "act", "pool"], "before", ["conv", "bn", "act", "pool", "dropout"]),  # 003, 004
    (["conv", "act", "pool"], "after", ["conv", "act", "bn", "pool", "dropout"]),  # 003 "after"
    (["conv", "pool", "act"], "before", ["conv", "pool", "bn", "act", "dropout"]),  # laptop
    (["conv", "dropout", "act", "pool"], "none", ["conv", "dropout", "act", "pool"]),  # 004 code
])
def test_conv_block_parts_come_in_the_configured_order(order, norm, expected):
    cfg = Variant(**BASE, conv_order=order, norm=norm, conv_dropout=0.25)
    names = names_of(build_model(cfg, (12, 12, 1), 3))
    assert [name for name in names if name.startswith("block1_")] == [f"block1_{part}"
                                                                      for part in expected]


def test_norm_at_puts_batchnorm_only_where_listed():
    convs_only = build_model(Variant(**BASE, norm="before", norm_at=["conv"]), (12, 12, 1), 3)
    assert "fc1_bn" not in names_of(convs_only) and "block2_bn" in names_of(convs_only)
    output = build_model(Variant(**BASE, norm="before", norm_at=["dense", "output"]),
                         (12, 12, 1), 3)
    assert names_of(output)[-3:] == ["head", "head_bn", "head_act"]
    assert "block1_bn" not in names_of(output)
    assert output.get_layer("head_act").activation is keras.activations.softmax


def test_per_conv_kernels_strides_pooling_and_features():
    cfg = Variant(conv_filters=[4, 8], conv_kernels=[5, 3], conv_strides=[2, 1],
                  conv_pooled=[True, False], pooling="average", pool_padding="same",
                  features="avg", conv_bias=False, dense_bias=False, dense_units=[6],
                  epochs=1, batch_size=8)
    model = build_model(cfg, (15, 15, 1), 3)
    shapes = output_shapes(model)
    assert shapes["block1_conv"] == (8, 8, 4) and shapes["block1_pool"] == (4, 4, 4)
    assert "block2_pool" not in shapes and shapes["global_avg_pool"] == (8,)
    assert isinstance(model.get_layer("block1_pool"), keras.layers.AveragePooling2D)
    assert model.get_layer("block1_conv").kernel_size == (5, 5)
    assert model.count_params() == (5 * 5 * 4) + (3 * 3 * 4 * 8) + (8 * 6) + (6 * 3 + 3)


def test_dropout_at_hidden_only_skips_the_first_dense_layer():
    cfg = Variant(**{**BASE, "dense_units": [16, 8]}, dropout=0.5, dropout_at=["hidden"])
    names = names_of(build_model(cfg, (12, 12, 1), 3))
    assert "fc1_dropout" not in names
    assert names.index("fc2_dropout") == names.index("fc1_act") + 1
    assert names.index("head_dropout") == names.index("fc2_act") + 1


def test_per_conv_lists_must_match_the_conv_count():
    with pytest.raises(ConfigError, match=r"conv_strides: one entry per conv layer, 2"):
        build_model(Variant(**BASE, conv_strides=[2]), (12, 12, 1), 3)


def test_input_norm_and_input_dropout_come_first():
    model = build_model(Variant(**BASE, input_norm=True, input_dropout=0.2), (12, 12, 1), 3)
    assert [layer.name for layer in model.layers[1:3]] == ["input_bn", "input_dropout"]


def test_named_initializer_and_regularizers_are_attached():
    cfg = Variant(**BASE, initializer="he_normal", kernel_regularizer={"class_name": "L2", "config": {"l2": 0.01}},
                  bias_regularizer="l1")
    model = build_model(cfg, (12, 12, 1), 3)
    for name in ("block1_conv", "fc1_dense", "head"):
        layer = model.get_layer(name)
        assert isinstance(layer.kernel_initializer, keras.initializers.HeNormal)
        assert isinstance(layer.kernel_regularizer, keras.regularizers.L2)
        assert layer.kernel_regularizer.l2 == pytest.approx(0.01)
        assert isinstance(layer.bias_regularizer, keras.regularizers.L1)
    assert len(model.losses) == 8  # kernel + bias penalty on each of 4 weighted layers


def test_leaky_relu_from_a_serialized_layer():
    cfg = Variant(**BASE, activation={"class_name": "LeakyReLU", "config": {"negative_slope": 0.1}})
    layer = build_model(cfg, (12, 12, 1), 3).get_layer("block1_act")
    assert isinstance(layer, keras.layers.LeakyReLU) and layer.negative_slope == pytest.approx(0.1)


def test_optimizer_from_keras_name_with_its_config():
    opt = build_optimizer(Variant(**BASE, optimizer="sgd", learning_rate=0.05, optimizer_config={"momentum": 0.9}))
    assert isinstance(opt, keras.optimizers.SGD)
    assert float(opt.learning_rate) == pytest.approx(0.05) and opt.momentum == pytest.approx(0.9)


@pytest.mark.parametrize("key, value", [
    ("activation", "relux"), ("initializer", "glorot_unicorn"),
    ("kernel_regularizer", "l3"), ("optimizer", "adamw2"),
])
def test_unknown_keras_names_are_clear_errors(key, value):
    cfg = Variant(**{**BASE, key: value})
    with pytest.raises(ConfigError, match=key):
        build_optimizer(cfg) if key == "optimizer" else build_model(cfg, (12, 12, 1), 3)


# --------------------------------------------------------------------------- LeNet-5, AlexNet

def output_shapes(model):
    return {layer.name: tuple(layer.output.shape[1:]) for layer in model.layers}


def test_lenet5_is_the_cnn_with_valid_5x5_convs():
    cfg = Variant(conv_filters=[6, 16], dense_units=[120, 84], kernel_size=5, padding="valid",
                  epochs=1, batch_size=8)
    model = build_model(cfg, (32, 32, 1), 10)
    shapes = output_shapes(model)
    assert shapes["block1_conv"] == (28, 28, 6) and shapes["block1_pool"] == (14, 14, 6)
    assert shapes["block2_conv"] == (10, 10, 16) and shapes["block2_pool"] == (5, 5, 16)
    assert shapes["flatten"] == (400,)
    assert [shapes[name] for name in ("fc1_dense", "fc2_dense", "head")] == [(120,), (84,), (10,)]
    assert model.count_params() == 61_706  # LeNet-5's 156 + 2416 + 48120 + 10164 + 850


ALEX = dict(model="alexnet", conv_filters=[4, 6, 8, 8, 6], dense_units=[16, 12], epochs=1,
            batch_size=8)


@pytest.mark.parametrize("channels", [1, 3])
def test_alexnet_pools_after_convs_1_2_5(channels):
    model = build_model(Variant(**ALEX, norm="before", dropout=0.4, kernel_size=5),
                        (32, 32, channels), 10)
    names, shapes = [layer.name for layer in model.layers], output_shapes(model)
    pools = ["block1_pool", "block2_pool", "block5_pool"]
    assert [name for name in names if name.endswith("_pool")] == pools
    assert [shapes[f"block{i}_act"][:2] for i in range(1, 6)] == [(16, 16), (8, 8), (8, 8), (8, 8),
                                                                 (4, 4)]
    assert [model.get_layer(f"block{i}_conv").kernel_size for i in range(1, 6)] == [
        (5, 5), (5, 5), (3, 3), (3, 3), (3, 3)]
    assert model.get_layer("block1_conv").kernel.shape == (5, 5, channels, 4)
    assert shapes["flatten"] == (4 * 4 * 6,)
    for block in ("block3", "fc2"):  # BN before the activation, dropout before each dense
        assert names.index(f"{block}_act") == names.index(f"{block}_bn") + 1
    assert names.index("fc1_dropout") == names.index("flatten") + 1
    assert names[-2:] == ["head_dropout", "head"] and shapes["head"] == (10,)


def test_alexnet_needs_five_conv_layers():
    with pytest.raises(ConfigError, match=r"conv_filters: alexnet has 5 conv layers \(got 3"):
        build_model(Variant(**{**ALEX, "conv_filters": [4, 4, 4]}), (32, 32, 1), 10)


def test_alexnet_too_small_images_fail_at_build():
    with pytest.raises(ValueError):  # `ablations validate` reports it with the data's size
        build_model(Variant(**ALEX, padding="valid"), (32, 32, 1), 10)


def _structure(model):
    return [(layer.name, type(layer).__name__, tuple(layer.output.shape), layer.count_params())
            for layer in model.layers]


@pytest.mark.parametrize("overrides", [{}, {"norm": "before", "dropout": 0.5}])
def test_validate_structure_is_the_built_network_without_weight_values(overrides):
    """What `ablations validate` builds: the same layers, output shapes and parameter counts as
    build_model, and no weight drawn (the variables have shapes only)."""
    cfg = Variant(**ALEX, **overrides)
    structure = build_structure(cfg, (32, 32, 1), 10)
    assert _structure(structure) == _structure(build_model(cfg, (32, 32, 1), 10))
    assert structure.weights and all(weight._value is None for weight in structure.weights)  # noqa: SLF001


def test_validate_structure_rejects_images_too_small_as_the_build_does():
    cfg = Variant(**ALEX, padding="valid")
    with pytest.raises(ValueError) as built:
        build_model(cfg, (32, 32, 1), 10)
    with pytest.raises(ValueError, match="output size would be zero") as structured:
        build_structure(cfg, (32, 32, 1), 10)
    assert str(structured.value) == str(built.value)


@pytest.mark.parametrize("initializer", ["zeros", "ones"])
def test_degenerate_initializers_build_and_run(initializer):
    """All-zero or all-one weights are a result of the init study (no learning, or blow-up),
    not a crash."""
    model = build_model(Variant(**ALEX, initializer=initializer, norm="before"), (32, 32, 1), 3)
    kernel = model.get_layer("block2_conv").kernel
    assert np.all(keras.ops.convert_to_numpy(kernel) == (initializer == "ones"))
    x = np.random.default_rng(0).normal(size=(8, 32, 32, 1)).astype("float32")
    probabilities = keras.ops.convert_to_numpy(model(x, training=True))  # eager: no tracing
    assert probabilities.shape == (8, 3)
    if initializer == "zeros":  # every unit computes the same: no class is preferred
        np.testing.assert_allclose(probabilities, 1 / 3, rtol=1e-6)


# --------------------------------------------------------------------------- ResNet50, Xception

def test_resnet50_on_gray_32x32_with_dense_head():
    cfg = Variant(model="resnet50", conv_filters=[1], dense_units=[16], dropout=0.5,
                  activation="elu", epochs=1, batch_size=8)
    model = build_model(cfg, (32, 32, 1), 10)
    assert [layer.name for layer in model.layers] == [
        "image", "resnet50", "fc1_dropout", "fc1_dense", "fc1_act", "head_dropout", "head"]
    assert model.get_layer("resnet50").input_shape == (None, 32, 32, 1)
    assert output_shapes(model)["resnet50"] == (2048,)  # global average pooling
    assert model.get_layer("fc1_act").activation is keras.activations.elu
    assert model.get_layer("head").activation is keras.activations.softmax


def test_resnet50_refuses_images_under_32_pixels():
    cfg = Variant(model="resnet50", conv_filters=[1], dense_units=[16], epochs=1, batch_size=8)
    with pytest.raises(ValueError, match="32"):  # `ablations validate` names the data's size
        build_model(cfg, (28, 28, 1), 10)


XCEPTION = dict(model="xception", conv_filters=[1], dense_units=[8], epochs=1, batch_size=8)


@pytest.fixture(scope="module")
def xception_gray():
    """One random-weight Xception model on 32x32 gray images (a build takes ~1.5 s)."""
    return build_model(Variant(**XCEPTION), (32, 32, 1), 10)


def test_xception_upsamples_gray_images_to_224_rgb(xception_gray):
    shapes = output_shapes(xception_gray)
    assert shapes["upsample"] == (224, 224, 1)  # 7x, as the notebook
    assert shapes["gray_to_rgb"] == (224, 224, 3) and shapes["xception"] == (2048,)
    assert xception_gray.layers[-1].name == "head"
    # Loadable in safe mode (no Lambda layer), as train/evaluate load models.
    config = keras.saving.serialize_keras_object(xception_gray)
    clone = keras.saving.deserialize_keras_object(config, safe_mode=True)
    assert [layer.name for layer in clone.layers] == [layer.name for layer in xception_gray.layers]


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def xception_weight_files(xception_gray, tmp_path_factory):
    """The random backbone's weights in the Keras 3 .weights.h5 format, and in the legacy HDF5
    layout of Keras' ImageNet file xception_weights_tf_dim_ordering_tf_kernels_notop.h5."""
    backbone, folder = xception_gray.get_layer("xception"), tmp_path_factory.mktemp("weights")
    backbone.save_weights(folder / "backbone.weights.h5")
    with h5py.File(folder / "xception_notop.h5", "w") as file:
        legacy_h5_format.save_weights_to_hdf5_group(file, backbone)
    return folder


@pytest.mark.parametrize("filename", ["backbone.weights.h5", "xception_notop.h5"])
def test_xception_loads_verified_backbone_weights_and_freezes(xception_gray, xception_weight_files,
                                                              filename):
    path = xception_weight_files / filename
    cfg = Variant(**XCEPTION, weights_file=str(path), weights_sha256=sha256(path).upper(),
                  freeze=True)
    model = build_model(cfg, (32, 32, 3), 5)
    assert "gray_to_rgb" not in [layer.name for layer in model.layers]
    backbone, source = model.get_layer("xception"), xception_gray.get_layer("xception")
    assert all(np.array_equal(a, b) for a, b in zip(backbone.get_weights(), source.get_weights()))
    assert not backbone.trainable and model.get_layer("head").trainable
    assert len(model.trainable_weights) == 4  # fc1 and head kernels and biases


def test_xception_weights_with_wrong_sha256_are_refused(tmp_path):
    path = tmp_path / "notop.h5"
    path.write_bytes(b"not the weights")
    cfg = Variant(**XCEPTION, weights_file=str(path), weights_sha256="ab" * 32)
    with pytest.raises(ConfigError, match=f"{path}: sha256 is {sha256(path)}, weights_sha256 "
                                          f"expects {'ab' * 32}"):
        build_model(cfg, (32, 32, 1), 10)  # fails before the backbone is built
    with pytest.raises(ConfigError, match=f"weights_sha256 is required .*{sha256(path)}"):
        verified_weights(path, None)
    assert verified_weights(path, sha256(path)) == path


def test_xception_weights_missing_or_not_xception(tmp_path):
    with pytest.raises(DataError, match="nope.h5: not found"):
        build_model(Variant(**XCEPTION, weights_file=str(tmp_path / "nope.h5"),
                            weights_sha256="0" * 64), (32, 32, 1), 10)
    path = tmp_path / "garbage.h5"
    path.write_bytes(b"verified, but not HDF5")
    with pytest.raises(ConfigError, match="garbage.h5: not Xception backbone weights"):
        build_model(Variant(**XCEPTION, weights_file=str(path), weights_sha256=sha256(path)),
                    (32, 32, 1), 10)


# --------------------------------------------------------------------------- transfer

SMALL = dict(conv_filters=[4, 6], dense_units=[8], norm="before", epochs=1, batch_size=8)


def two_models(source_shape=(12, 12, 1), target_shape=(12, 12, 1)):
    keras.utils.set_random_seed(1)
    source = build_model(Variant(**SMALL), source_shape, 3)
    keras.utils.set_random_seed(2)  # different initial weights in the target
    return source, build_model(Variant(**SMALL), target_shape, 3)


def weights_of(model):
    return {layer.name: layer.get_weights() for layer in model.layers if layer.weights}


def same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def rule(freeze=False, **extra):
    return Variant(**BASE, freeze=freeze, init_from="source", **extra)


def test_transfer_copies_every_layer_but_the_head():
    source, target = two_models()
    head_before = target.get_layer("head").get_weights()
    copied = transfer_weights(source, target, rule())
    src, dst = weights_of(source), weights_of(target)
    assert len(copied) == len(dst) - 1 == 6  # 2 conv + 2 BN + dense + BN
    assert copied[0] == {"name": "block1_conv", "shapes": [[3, 3, 1, 4], [4]], "rule": "copied",
                         "frozen": False}
    for name in dst:
        if name != "head":
            assert same(src[name], dst[name]), name
    assert same(dst["head"], head_before) and not same(dst["head"], src["head"])
    assert all(layer.trainable for layer in target.layers)


def test_copy_head_copies_the_head_too():
    source, target = two_models()
    copied = transfer_weights(source, target, rule(copy_head=True))
    assert copied[-1]["name"] == "head"
    assert same(weights_of(target)["head"], weights_of(source)["head"])


def test_frozen_transfer_stays_fixed_through_a_training_step():
    source, target = two_models()
    transfer_weights(source, target, rule(freeze=True))
    frozen = {layer.name for layer in target.layers if layer.weights and not layer.trainable}
    assert frozen == set(weights_of(target)) - {"head"}
    target.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
    before = weights_of(target)
    x = np.random.default_rng(0).normal(size=(16, 12, 12, 1)).astype("float32")
    target.fit(x, np.arange(16) % 3, batch_size=8, epochs=1, verbose=0)
    after = weights_of(target)
    for name in frozen:  # BN moving statistics included: a frozen BN runs in inference mode
        assert same(before[name], after[name]), name
    assert not same(before["head"], after["head"])


def test_transfer_of_other_shapes_is_an_error_unless_a_rule_is_chosen():
    """Gray source, RGB target (LeNet MNIST → STL-10): the first conv is not silently skipped."""
    source, target = two_models((12, 12, 1), (12, 12, 3))
    with pytest.raises(ConfigError, match=r"transfer_mismatch: layer 'block1_conv' has weights "
                                          r"\[\[3, 3, 1, 4\], \[4\]\].*\[\[3, 3, 3, 4\], \[4\]\]"):
        transfer_weights(source, target, rule(freeze=True))
    copied = transfer_weights(source, target, rule(freeze=True, transfer_mismatch="spread_channels"))
    assert [row["rule"] for row in copied[:2]] == ["spread_channels", "copied"]
    kernel = target.get_layer("block1_conv").get_weights()[0]
    np.testing.assert_allclose(kernel.sum(axis=2), source.get_layer("block1_conv").get_weights()[0][:, :, 0],
                               rtol=1e-6)  # a gray image (equal channels) gets the source's response
    assert not target.get_layer("block1_conv").trainable


def test_transfer_without_any_match_is_a_config_error():
    source = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="other")])
    _, target = two_models()
    with pytest.raises(ConfigError, match="init_from: no layer"):
        transfer_weights(source, target, rule())


def test_notebook_000_code_order_is_expressible_too():
    """000's code: conv+act → pool → BN (convs only); conv → pool → act → BN is the same
    function (max-pooling commutes with ReLU) with the same 111,946 parameters, 448 of them BN
    statistics (the notebook budget follows the text instead; docs/fidelity.md)."""
    cfg = Variant(conv_filters=[32, 64, 128], conv_strides=[2, 2, 1], dense_units=[128],
                  norm="after", norm_at=["conv"], epochs=1, batch_size=8)
    model = build_model(cfg, (32, 32, 3), 10)
    names = [layer.name for layer in model.layers]
    assert names[1:5] == ["block1_conv", "block1_pool", "block1_act", "block1_bn"]
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert (model.count_params(), trainable) == (111_946, 111_498)
