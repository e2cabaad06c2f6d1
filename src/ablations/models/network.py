"""Your own network (a saved .keras file or a builder function) and its ablations.

An ablation is an edit of the network's Keras config, rebuilt by Keras itself
(`serialize_keras_object` / `deserialize_keras_object`, the config behind `get_config` /
`from_config`): a removed layer's consumers take its input (a merge layer's first input, the
shortcut of `Add()([shortcut, branch])`), layers that then lead to no output go with it, and a
replaced layer's entry is swapped for the new layer's own serialization. This works on
Functional and Sequential models, the zoo's included.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path
from typing import Any

import keras
import numpy as np

from ablations.config import Network, Variant
from ablations.errors import ConfigError


def _reason(error: Exception, limit: int = 200) -> str:
    """An exception as a short phrase for an error line: its class and first line."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:limit]}" if lines else type(error).__name__


def _load_file(network: Network) -> keras.Model:
    path = Path(network.file)
    if not path.is_file():
        raise ConfigError(f"model.file {path}: not found")
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=network.safe_mode)
    except Exception as error:  # noqa: BLE001 Keras raises many kinds for a file it cannot read
        if "Lambda" in str(error) and "safe" in str(error):
            raise ConfigError(f"model.file {path}: holds a Lambda layer (arbitrary code), which "
                              "Keras' safe_mode refuses; set model.safe_mode: false only for a "
                              "file you trust") from None
        raise ConfigError(f"model.file {path}: not a Keras model file ({_reason(error)})") from None
    if not isinstance(model, keras.Model):
        raise ConfigError(f"model.file {path}: holds a {type(model).__name__}, not a keras.Model")
    return model


def _builder(network: Network):
    """The builder function, imported with the repository root (the working directory DVC
    runs stages in) first on sys.path."""
    module_name, function = network.builder.split(":")
    root = str(Path.cwd())
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # noqa: BLE001 any error while importing the user's module
        raise ConfigError(f"model.builder {network.builder}: cannot import {module_name} "
                          f"({_reason(error)})") from None
    built = getattr(module, function, None)
    if not callable(built):
        raise ConfigError(f"model.builder {network.builder}: {module_name} has no function "
                          f"{function!r}")
    return built


def _build(cfg: Variant, input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    network = cfg.model
    if network.file is not None:
        model = _load_file(network)
    else:
        try:
            model = _builder(network)(tuple(input_shape), num_classes, cfg)
        except ConfigError:
            raise
        except Exception as error:  # noqa: BLE001 the user's code
            raise ConfigError(f"model.builder {network.builder}: failed "
                              f"({_reason(error)})") from None
        if not isinstance(model, keras.Model):
            raise ConfigError(f"model.builder {network.builder}: returned a "
                              f"{type(model).__name__}, not a keras.Model")
    where = f"model.{'file' if network.file else 'builder'} {network.file or network.builder}"
    expected = (None, *input_shape)
    if tuple(model.input_shape) != expected:
        raise ConfigError(f"{where}: takes inputs of shape {tuple(model.input_shape)}, the data "
                          f"has {expected}")
    if tuple(model.output_shape) != (None, num_classes):
        raise ConfigError(f"{where}: outputs shape {tuple(model.output_shape)}, the data has "
                          f"{num_classes} classes: (None, {num_classes})")
    # Training takes the outputs as probabilities (sparse categorical cross-entropy): logits
    # would train silently wrong. Two random images; a softmax gives rows that sum to 1.
    outputs = keras.ops.convert_to_numpy(model(np.random.default_rng(0).normal(
        size=(2, *input_shape)).astype("float32"), training=False))
    if not (np.all(outputs >= 0) and np.allclose(outputs.sum(axis=1), 1.0, atol=1e-3)):
        raise ConfigError(f"{where}: its outputs are not class probabilities (rows sum to "
                          f"{np.round(outputs.sum(axis=1), 3).tolist()}); end it with a softmax")
    return model


def own_network(cfg: Variant, input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """The network of `cfg.model` (a Network), ablated as cfg says; with weights: keep, every
    layer that is kept unchanged holds the file's weights."""
    original = _build(cfg, input_shape, num_classes)
    model = ablate(original, cfg, safe_mode=cfg.model.safe_mode, always_rebuild=True)
    if cfg.model.weights == "keep":
        for layer in model.layers:
            if layer.name in cfg.replace_layers or not layer.weights:
                continue
            layer.set_weights(original.get_layer(layer.name).get_weights())
    return model


# --- ablation: an edit of the Keras config -------------------------------------------------

def _history(tensor: dict) -> list:
    return tensor["config"]["keras_history"]


def _tensors(value: Any):
    """Every serialized KerasTensor in a node's args/kwargs (nested lists and dicts)."""
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            yield value
        else:
            for item in value.values():
                yield from _tensors(item)
    elif isinstance(value, (list, tuple)):  # in memory, node args are tuples
        for item in value:
            yield from _tensors(item)


def _removed(model: keras.Model, cfg: Variant) -> list[str]:
    """The names cfg removes (prefixes resolved), each checked against the model."""
    names = [layer.name for layer in model.layers if type(layer).__name__ != "InputLayer"]
    unknown = [name for name in [*cfg.remove_layers, *cfg.replace_layers] if name not in names]
    if unknown:
        raise ConfigError(f"ablate: no layer {unknown[0]!r} in the network (its layers: "
                          f"{', '.join(names)})")
    removed = list(cfg.remove_layers)
    for prefix in cfg.remove_prefixes:
        matched = [name for name in names if name.startswith(prefix)]
        if not matched:
            raise ConfigError(f"ablate: no layer name starts with {prefix!r} (its layers: "
                              f"{', '.join(names)})")
        removed += [name for name in matched if name not in removed]
    if set(names) <= set(removed):
        raise ConfigError("ablate: removes every layer of the network")
    return removed


def _shapes(tensors) -> list[tuple]:
    return [tuple(t.shape) for t in (tensors if isinstance(tensors, (list, tuple)) else [tensors])]


def _check_removable(layer) -> None:
    """A removed layer must be used once and give its (first) input's shape, so that its
    consumers can take that input instead."""
    calls = len(layer._inbound_nodes)  # noqa: SLF001 Keras' own record of the layer's calls
    if calls != 1:
        raise ConfigError(f"ablate: layer {layer.name!r} is called {calls} times (a shared "
                          "layer); only a layer used once can be removed")
    inputs, outputs = _shapes(layer.input), _shapes(layer.output)
    if len(outputs) != 1 or any(shape != outputs[0] for shape in inputs):
        shown_in = inputs[0] if len(inputs) == 1 else inputs
        raise ConfigError(f"ablate: removing layer {layer.name!r} changes the shape: input "
                          f"{shown_in}, output {outputs[0] if len(outputs) == 1 else outputs}; "
                          "only a layer that keeps its input's shape can be removed")


def _remove_functional(config: dict, removed: set[str]) -> None:
    """Rewire `config` (a Functional's) in place: consumers of a removed layer take its first
    input (followed through removed layers), then layers that reach no output are dropped."""
    by_name = {entry["name"]: entry for entry in config["layers"]}

    def source(history: list) -> list:
        while history[0] in removed:
            first = next(_tensors(by_name[history[0]]["inbound_nodes"][0]))
            history = _history(first)
        return history

    kept = [entry for entry in config["layers"] if entry["name"] not in removed]
    for entry in kept:
        for tensor in _tensors(entry["inbound_nodes"]):
            tensor["config"]["keras_history"] = source(_history(tensor))
    outputs = config["output_layers"]
    single = isinstance(outputs[0], str)  # one output: [name, node, index], not a list of them
    outputs = [source(list(out)) for out in ([outputs] if single else outputs)]
    config["output_layers"] = outputs[0] if single else outputs
    # Layers that no longer lead to an output (a residual branch whose merge was removed)
    needed, todo = set(), [out[0] for out in outputs]
    kept_by_name = {entry["name"]: entry for entry in kept}
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        todo += [_history(t)[0] for t in _tensors(kept_by_name[name]["inbound_nodes"])]
    inputs = config["input_layers"]
    needed |= {inputs[0]} if isinstance(inputs[0], str) else {inp[0] for inp in inputs}
    config["layers"] = [entry for entry in kept if entry["name"] in needed]


def _replacement(name: str, spec: dict[str, Any], safe_mode: bool) -> dict:
    """The serialization of the layer `spec` names, built by Keras (unknown classes and
    arguments fail here), named `name`."""
    try:
        layer = keras.saving.deserialize_keras_object(
            {"module": "keras.layers", "class_name": spec["class_name"], "registered_name": None,
             "config": {**(spec.get("config") or {}), "name": name}}, safe_mode=safe_mode)
    except Exception as error:  # noqa: BLE001 Keras' errors for an unknown class or argument
        raise ConfigError(f"ablate.replace.{name}: not a Keras layer ({_reason(error)})") from None
    if not isinstance(layer, keras.layers.Layer):
        raise ConfigError(f"ablate.replace.{name}: {spec['class_name']} is not a Keras layer")
    return keras.saving.serialize_keras_object(layer), set(inspect.signature(layer.call).parameters)


def _call_with(nodes: list, accepted: set[str]) -> list:
    """The old layer's calls, keeping the keyword arguments the new layer's call takes
    (BatchNormalization is called with `mask`, LayerNormalization takes none)."""
    return [{**node, "kwargs": {k: v for k, v in node.get("kwargs", {}).items() if k in accepted}}
            for node in nodes]


def _deserialize(serialized: dict, safe_mode: bool, what: str) -> keras.Model:
    try:
        return keras.saving.deserialize_keras_object(serialized, safe_mode=safe_mode)
    except Exception as error:  # noqa: BLE001 a replaced layer that does not fit its inputs
        raise ConfigError(f"ablate: {what}: Keras cannot build the network "
                          f"({_reason(error, 300)})") from None


def ablate(model: keras.Model, cfg: Variant, *, safe_mode: bool = True,
           always_rebuild: bool = False) -> keras.Model:
    """`model` without cfg.remove_layers / remove_prefixes and with cfg.replace_layers swapped
    in, built by Keras from the edited config (fresh weights). Without an ablation, `model`
    itself (or its rebuild, with `always_rebuild`: every variant then starts alike)."""
    if not (cfg.remove_layers or cfg.remove_prefixes or cfg.replace_layers or always_rebuild):
        return model
    removed = _removed(model, cfg)
    for name in removed:
        _check_removable(model.get_layer(name))
    serialized = keras.saving.serialize_keras_object(model)
    config = serialized["config"]
    sequential = serialized["class_name"] == "Sequential"
    entries = config["layers"]
    for index, entry in enumerate(entries):
        name = entry["config"]["name"] if sequential else entry["name"]
        if name in cfg.replace_layers:
            new, accepted = _replacement(name, cfg.replace_layers[name], safe_mode)
            entries[index] = new if sequential else {
                **new, "name": name, "inbound_nodes": _call_with(entry["inbound_nodes"], accepted)}
    if sequential:
        config["layers"] = [e for e in entries if e["config"]["name"] not in set(removed)]
    else:
        _remove_functional(config, set(removed))
    what = ", ".join([*(f"without {name}" for name in removed),
                      *(f"{name} replaced" for name in cfg.replace_layers)]) or "rebuilt"
    rebuilt = _deserialize(serialized, safe_mode, what)
    for name in cfg.replace_layers:  # a replacement must fit where the old layer was
        old, new = _shapes(model.get_layer(name).output), _shapes(rebuilt.get_layer(name).output)
        if old != new:
            raise ConfigError(f"ablate.replace.{name}: the new layer outputs {new[0]}, the old "
                              f"one {old[0]}; a replacement must keep the shape")
    return rebuilt
