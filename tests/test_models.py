"""The model builder puts layers in the configured order and attaches named initializers."""

import keras
import pytest

from ablations.config import Variant
from ablations.errors import ConfigError
from ablations.models.blocks import build_optimizer
from ablations.models.zoo import build_model

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
