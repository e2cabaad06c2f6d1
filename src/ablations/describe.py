"""`ablations describe`: every variant's layers, output shapes and parameter counts, as Keras
builds and counts them (`count_params`; BatchNorm's moving statistics are non-trainable),
without training, so a network can be checked against its notebook before any GPU hour.

Networks are built without pretrained weights (the same layers and counts); a transfer
variant lists the layers it would copy from its source and whether they stay frozen.
"""

from __future__ import annotations

from typing import Any

from ablations.config import Params

# The settings shown per layer class (Keras config keys); other keys are left out.
SETTINGS = ("filters", "kernel_size", "strides", "padding", "use_bias", "units", "pool_size",
            "rate", "activation", "negative_slope", "size", "axis")


def _settings(layer) -> dict[str, Any]:
    config = layer.get_config()
    shown = {key: config[key] for key in SETTINGS if key in config}
    if isinstance(shown.get("activation"), dict):  # a serialized function: its name suffices
        shown["activation"] = shown["activation"].get("config", shown["activation"])
    if shown.get("activation") == "linear":  # a Conv2D/Dense whose activation is its own layer
        del shown["activation"]
    return {key: list(value) if isinstance(value, tuple) else value for key, value in shown.items()}


def _shape(layer) -> list[int | None]:
    output = layer.output
    if hasattr(output, "shape"):
        return list(output.shape[1:])
    return [list(o.shape[1:]) for o in output]


def layer_rows(model) -> list[dict[str, Any]]:
    """One row per top-level layer (a keras.applications backbone is one row)."""
    return [{"name": layer.name, "class": type(layer).__name__, **_settings(layer),
             "output_shape": _shape(layer), "params": layer.count_params(),
             "trainable": layer.trainable}
            for layer in model.layers if type(layer).__name__ != "InputLayer"]


def _counts(model) -> dict[str, int]:
    trainable = sum(int(w.numpy().size) for w in model.trainable_weights)
    return {"params_total": int(model.count_params()), "params_trainable": trainable}


def _transfer(source, target, cfg) -> dict[str, Any]:
    """What transfer would copy into `target` (a model of its own), frozen as training would."""
    from ablations.models.zoo import transfer_plan

    plan = transfer_plan(source, target, cfg)
    for name, _, _ in plan:
        target.get_layer(name).trainable = not cfg.freeze
    return {"from": cfg.init_from, "frozen": cfg.freeze,
            "layers": [{"name": name, "shapes": shapes, "rule": rule}
                       for name, shapes, rule in plan]}


def describe(params: Params, studies: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """{study: {variant: {params_total, params_trainable, layers[, transfer]}}}."""
    from ablations.models.zoo import architecture, build_model, structure_only

    built: dict[str, Any] = {}  # a network is built once per architecture and image shape

    def model_of(study: str, name: str, shared: bool = True):
        cfg = structure_only(params.variant(study, name))
        shape, classes = params.input_shape(params.variant_data(study, name))
        if not shared:  # a transfer target: its copied layers may be frozen
            return cfg, build_model(cfg, shape, classes)
        key = architecture(cfg, shape)
        if key not in built:
            built[key] = build_model(cfg, shape, classes)
        return cfg, built[key]

    result: dict[str, dict[str, dict[str, Any]]] = {}
    for study in studies:
        result[study] = {}
        for name in params.studies[study].variants:
            cfg, model = model_of(study, name, shared=params.variant(study, name).init_from is None)
            transfer = None
            if cfg.init_from is not None:
                transfer = _transfer(model_of(study, cfg.init_from)[1], model, cfg)
            result[study][name] = {**_counts(model), "layers": layer_rows(model),
                                   **({"transfer": transfer} if transfer else {})}
    return result


def _row_text(row: dict[str, Any]) -> str:
    skip = {"name", "class", "output_shape", "params", "trainable"}
    settings = ", ".join(f"{key}={value}" for key, value in row.items() if key not in skip)
    frozen = "" if row["trainable"] else "  (frozen)"
    return (f"    {row['name']:<22} {row['class']:<22} {str(row['output_shape']):<18} "
            f"{row['params']:>12,}  {settings}{frozen}")


def as_text(described: dict[str, dict[str, dict[str, Any]]]) -> str:
    lines = []
    for study, variants in described.items():
        for name, entry in variants.items():
            lines.append(f"{study}/{name}: {entry['params_total']:,} parameters, "
                         f"{entry['params_trainable']:,} trainable")
            lines.extend(_row_text(row) for row in entry["layers"])
            transfer = entry.get("transfer")
            if transfer:
                state = "frozen" if transfer["frozen"] else "trained on"
                lines.append(f"    from {study}/{transfer['from']} ({state}):")
                lines.extend(f"      {row['name']} {row['shapes']} {row['rule']}"
                             for row in transfer["layers"])
            lines.append("")
    return "\n".join(lines)
