"""Build and save the example network, own_net.keras: a small functional CNN for 28x28 gray
images (Fashion-MNIST, 10 classes) with a BatchNorm, a residual block and Dropout.

    python examples/own-network/build_own_net.py networks/own_net.keras

Every layer has a name: an `ablate:` block names the layers it removes or replaces. The
residual block is `Add()([shortcut, branch])` with the shortcut first, so removing the add
(or the group of `res_` layers) leaves the shortcut.
"""

import sys
from pathlib import Path

import ablations  # noqa: F401  picks the Keras backend, as the pipeline does
import keras
from keras import layers


def build(input_shape=(28, 28, 1), num_classes=10, cfg=None) -> keras.Model:
    """Also usable as a builder: model: {builder: "networks.own_net:build"} (cfg unused)."""
    image = keras.Input(shape=input_shape, name="image")
    x = layers.Conv2D(8, 3, padding="same", name="conv1")(image)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.ReLU(name="relu1")(x)
    shortcut = layers.MaxPooling2D(2, name="pool1")(x)  # 14x14x8
    branch = layers.Conv2D(8, 3, padding="same", name="res_conv")(shortcut)
    branch = layers.BatchNormalization(name="res_bn")(branch)
    branch = layers.ReLU(name="res_relu")(branch)
    x = layers.Add(name="res_add")([shortcut, branch])
    x = layers.MaxPooling2D(2, name="pool2")(x)  # 7x7x8
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dropout(0.3, name="dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="head")(x)
    return keras.Model(image, outputs, name="own_net")


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "networks/own_net.keras")
    keras.utils.set_random_seed(0)
    out.parent.mkdir(parents=True, exist_ok=True)
    build().save(out)
    print(f"{out}: {out.stat().st_size:,} bytes")
