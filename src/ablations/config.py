"""Load and validate params.yaml; resolve a variant = study defaults ⊕ variant overrides.

The whole file is validated (pydantic, unknown keys rejected) before any stage does work, so
a typo anywhere fails every stage at once with the key path in the message. Keras names
(activation, initializer, regularizer, optimizer) are checked with Keras' own `get` functions
in `ablations.models.blocks`, where Keras is imported anyway.
"""

from __future__ import annotations

import itertools
import math
import re
import reprlib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictFloat,
    StrictInt,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ablations.data.formats import WEIGHTS_DIR
from ablations.data.registry import (
    CLASS_NAMES,
    DATASET_NAMES,
    IMAGE_SHAPES,
    SPLIT_SIZES,
    WEIGHTS_NAMES,
)
from ablations.errors import ConfigError

# Upper bounds: far above any study this pipeline is meant for, low enough that a slip (an
# extra zero, a pasted number) fails at once rather than hours into a run. Messages name them.
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 65_536
MAX_SEEDS = 1_000  # trainings per variant
MAX_VARIANTS = 1_000  # per study, factorial cells included
MAX_LAYERS = 64  # entries of conv_filters or dense_units
MAX_WIDTH = 65_536  # filters of a conv layer, units of a dense layer
MAX_KERNEL_SIZE = 64  # pixels per side
MAX_IMAGE_SIZE = 1_024  # data.prepared.*.size, pixels per side
MAX_IMAGES = 10_000_000  # max_train, max_val, max_test
MAX_SEED = 2**32 - 1  # the seed range of NumPy and scikit-learn
MAX_LEARNING_RATE = 10.0
MAX_NAME_LENGTH = 100
MAX_DEGREE = 50  # polyfit: a least-squares fit of higher degree is hopelessly ill-conditioned
MAX_FOLDS = 100  # polyfit
MAX_SAMPLES = 10_000_000  # polyfit.n
# A study's equivalence margin, points of test accuracy: two variants whose difference lies
# inside ± margin (at the study's confidence) are `equivalent` (ablations.decisions). 1 point
# is about the seed-to-seed spread of these studies' test accuracies: a smaller difference
# would not change which variant anyone picks.
DEFAULT_MARGIN = 1.0
MAX_MARGIN = 100.0  # accuracy differences span at most 100 points
# Names of studies, variants and prepared datasets become folder names and DVC stage names.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")

Probability = Annotated[float, Field(ge=0.0, lt=1.0)]
PositiveInt = Annotated[int, Field(gt=0)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
ImageCount = Annotated[int, Field(gt=0, le=MAX_IMAGES)]
Widths = Annotated[list[Annotated[int, Field(gt=0, le=MAX_WIDTH)]], Field(max_length=MAX_LAYERS)]
Kernel = Annotated[int, Field(gt=0, le=MAX_KERNEL_SIZE)]
# A Keras identifier: a name ("relu") or a serialized object ({"class_name": "L2", "config": {...}}).
KerasId = str | dict[str, Any]



class Strict(BaseModel):
    # strict: no silent conversions (true is no batch size, "3" no epoch count); finite floats
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class SeedRange(Strict):
    """Seeds spent where answers are undecided (ablations.sequential): every variant trains
    seeds 0 … min−1; after each round the variants an undecided answer rests on train the next
    seed, until every answer is decided or they have `max` seeds (at most max − min + 1 looks)."""

    min: Annotated[int, Field(ge=1, le=MAX_SEEDS)]  # 1: a factorial study decides from its design
    max: Annotated[int, Field(ge=1, le=MAX_SEEDS)]

    @model_validator(mode="after")
    def _ordered(self) -> SeedRange:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        return self


# A study's `seeds`: a list (every variant trains each), or a range {min, max} (sequential).
# Tags in <> are left out of error messages' key paths (no params key can contain "<").
Seeds = Annotated[
    Annotated[list[Seed], Field(min_length=1, max_length=MAX_SEEDS), Tag("<list>")]
    | Annotated[SeedRange, Tag("<range>")],
    Discriminator(lambda value: "<range>" if isinstance(value, dict | SeedRange) else "<list>")]


class PreparedData(Strict):
    """One prepared (split + scaled) copy of a raw dataset; studies refer to it by name."""

    source: Literal[DATASET_NAMES]  # type: ignore[valid-type]
    # none: raw 0-255 pixels as floats (notebook 001); standardize: per-channel mean/std of the
    # training split; standardize_global: one mean/std over all channels (notebooks 002, 003).
    scaling: Literal["none", "zero_one", "minus_one_one", "standardize", "standardize_global"]
    # pad/resize images to size x size pixels; None keeps them
    size: Annotated[int, Field(gt=0, le=MAX_IMAGE_SIZE)] | None = None
    # How a smaller image reaches `size`: zero-padding (LeNet-5's paper) or a bilinear resize
    # (notebook 004's transforms.Resize); larger images are always resized.
    fit: Literal["pad", "resize"] = "pad"
    val_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1
    max_train: ImageCount | None = None  # cap on training images (stratified); None = all
    max_val: ImageCount | None = None  # validation is run every epoch: a cap saves time
    max_test: ImageCount | None = None
    # Keep only these classes, relabelled 0..k-1 in this order (e.g. a transfer source/target
    # pair from one dataset); None keeps every class.
    classes: list[Annotated[int, Field(ge=0)]] | None = None
    seed: Seed = 0

    @model_validator(mode="after")
    def _classes_distinct(self) -> PreparedData:
        if self.classes is not None and len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be distinct (got {self.classes})")
        return self

    @model_validator(mode="after")
    def _fits_the_dataset(self) -> PreparedData:
        """Classes and caps against the dataset's known classes and split sizes, before any
        data is read (the split stage checks the actual files again)."""
        count = len(CLASS_NAMES[self.source])
        unknown = [c for c in self.classes or () if c >= count]
        if unknown:
            raise ValueError(f"classes: {unknown} not classes of {self.source} "
                             f"(allowed 0..{count - 1})")
        kept = len(self.classes) if self.classes is not None else count
        if kept < 2:
            raise ValueError(f"classes: {self.classes} keeps {kept} class; a classifier needs "
                             "at least 2")
        for cap in ("max_train", "max_val", "max_test"):
            if getattr(self, cap) is not None and getattr(self, cap) < kept:
                raise ValueError(f"{cap}: {getattr(self, cap)} is fewer than the {kept} classes "
                                 "(allowed: at least one image per class)")
        train, _ = SPLIT_SIZES[self.source]
        images = train * kept // count  # the official training images of the kept classes
        val = math.ceil(self.val_fraction * images)  # as scikit-learn's train_test_split counts
        if min(val, images - val) < kept:
            part = "validation" if val < kept else "training"
            raise ValueError(f"val_fraction: {self.val_fraction} leaves {min(val, images - val)} "
                             f"{part} images of the {images} of {self.source} ({kept} classes); "
                             f"allowed: between {kept / images:.2g} and {1 - kept / images:.4g}")
        return self


class DataConfig(Strict):
    mirror: str | None = None  # folder with the original files; ABLATIONS_DATA_MIRROR wins
    raw: list[Literal[DATASET_NAMES]]  # type: ignore[valid-type]
    prepared: dict[str, PreparedData]
    # Pretrained weights to provision (names of registry.WEIGHTS); a variant's `weights` names
    # one. Each is checked against the md5 Keras publishes; its sha256 is the weights stage's
    # output, pinned by dvc.lock, so there is no checksum to write here.
    weights: list[Literal[WEIGHTS_NAMES]] = []  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _sources_are_downloaded(self) -> DataConfig:
        if WEIGHTS_DIR in self.prepared:
            raise ValueError(f"prepared.{WEIGHTS_DIR}: the name of the weights folder")
        for name, prepared in self.prepared.items():
            if prepared.source not in self.raw:
                raise ValueError(
                    f"prepared.{name}.source={prepared.source!r} is not in data.raw {self.raw}"
                )
        return self


class EarlyStopping(Strict):
    """Train until stable (notebook 000): stop once `monitor` has not improved by `min_delta`
    for `patience` epochs; the variant's `epochs` is then the maximum."""

    monitor: Literal["val_loss", "val_accuracy", "loss", "accuracy"] = "val_loss"
    patience: PositiveInt = 3
    min_delta: Annotated[float, Field(ge=0.0)] = 0.0
    restore_best_weights: bool = True  # the model kept is the best epoch's, not the last's


# Your own networks live in this folder (a .keras file, or the `networks` package of builder
# modules): dvc.yaml's train and validate stages depend on it. DVC cannot template an
# optional per-study dependency, so one folder is tracked for every study; the unit
# fingerprint (units.py) hashes only the network a unit uses, so only its units retrain.
NETWORKS_DIR = "networks"
BUILDER_PATTERN = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
LayerName = Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH)]


class Network(Strict):
    """A network from outside the zoo: `file` (a saved .keras model under networks/) or
    `builder` ("networks.module:function", called as function(input_shape, num_classes, cfg)).
    Its layers are the network's own; the study's settings (optimizer, epochs, data, seeds)
    train it."""

    file: str | None = None
    builder: str | None = None
    # fresh: initialized anew from the architecture (per seed); keep: the file's weights
    # (layers that an ablation replaces start fresh).
    weights: Literal["fresh", "keep"] = "fresh"
    # Keras' safe_mode: a file or config holding a Lambda layer (arbitrary code) is refused
    # unless this is false; only for files you trust.
    safe_mode: bool = True

    @model_validator(mode="after")
    def _one_source(self) -> Network:
        if (self.file is None) == (self.builder is None):
            raise ValueError("model: set exactly one of file (a .keras model) or builder "
                             "(\"networks.module:function\")")
        if self.file is not None:
            path = Path(self.file)
            if path.is_absolute() or ".." in path.parts or path.parts[0] != NETWORKS_DIR:
                raise ValueError(f"model.file: {excerpt(self.file)} must be a path inside "
                                 f"{NETWORKS_DIR}/ (the folder DVC tracks for your networks)")
            if path.suffix != ".keras":
                raise ValueError(f"model.file: {excerpt(self.file)} is not a .keras file "
                                 "(keras.Model.save writes one)")
        if self.builder is not None:
            if not BUILDER_PATTERN.fullmatch(self.builder):
                raise ValueError(f"model.builder: {excerpt(self.builder)} is not "
                                 "\"package.module:function\"")
            if self.builder.split(".")[0].split(":")[0] != NETWORKS_DIR:
                raise ValueError(f"model.builder: {excerpt(self.builder)} must be a module of "
                                 f"the {NETWORKS_DIR} package ({NETWORKS_DIR}/…py, the folder "
                                 "DVC tracks for your networks)")
            if self.weights == "keep":
                raise ValueError("model.weights: keep needs a file (a builder makes new weights)")
        return self

    def module_path(self) -> Path | None:
        """The builder's source file (networks/x/y.py or networks/x/y/__init__.py)."""
        if self.builder is None:
            return None
        base = Path(*self.builder.split(":")[0].split("."))
        package = base / "__init__.py"
        return package if package.is_file() else base.with_suffix(".py")


ABLATION_KEYS = ("remove_layers", "remove_prefixes", "replace_layers")  # of Variant

# Keys that shape the zoo's networks: a network of your own has its own layers, so setting
# one of these with it would silently do nothing.
ZOO_ONLY = {"conv_filters", "kernel_size", "conv_kernels", "conv_strides", "conv_pooled",
            "conv_names", "padding", "conv_order", "pooling", "pool_padding", "conv_bias",
            "conv_dropout", "features", "dense_units", "dense_bias", "activation",
            "dense_activation", "norm", "norm_at", "input_norm", "bn_momentum", "input_dropout",
            "dropout", "dropout_at", "initializer", "dense_initializer", "init_biases",
            "kernel_regularizer", "bias_regularizer", "weights_file", "weights_sha256", "weights"}


class Variant(Strict):
    """Everything one training can change; study defaults ⊕ variant overrides."""

    model: Literal["cnn", "alexnet", "resnet", "resnet50", "xception"] | Network = "cnn"
    # Ablations (generated from a study's `ablate:`, or written by hand): layers removed by
    # name or name prefix (their consumers take their input), layers replaced by a Keras layer
    # config ({class_name, config}). Any Functional or Sequential network, the zoo's included.
    remove_layers: list[LayerName] = []
    remove_prefixes: list[LayerName] = []
    replace_layers: dict[LayerName, dict[str, Any]] = {}
    data: str | None = None  # a key of data.prepared; None = the study's data
    conv_filters: Widths  # one conv block per entry
    kernel_size: Kernel = 3
    # Per conv layer (one entry per conv_filters entry); None: kernel_size / stride 1 / a pool
    # after every conv (alexnet: after the 1st, 2nd and 5th, kernels k, 5, 3, 3, 3).
    conv_kernels: list[Kernel] | None = None
    conv_strides: list[PositiveInt] | None = None
    conv_pooled: list[bool] | None = None
    # Layer-name prefixes (default block1, block2, ...): transfer copies layers by name, so a
    # target with extra convs in front names the shared ones as the source does.
    conv_names: list[str] | None = None
    padding: Literal["same", "valid"] = "same"
    # The parts of a conv block in order; BatchNorm sits right before or after "act" (`norm`),
    # so [conv, act, pool] with norm before is conv → BN → act → pool (notebooks 003, 004) and
    # with norm after conv → act → BN → pool (003 "after"). Dropout (conv_dropout) goes where
    # "dropout" stands, else at the end of the block.
    conv_order: list[Literal["conv", "pool", "act", "dropout"]] = ["conv", "pool", "act"]
    pooling: Literal["max", "average"] = "max"  # 2x2, stride 2
    pool_padding: Literal["valid", "same"] = "valid"
    conv_bias: bool = True
    conv_dropout: Probability = 0.0
    # Map → vector before the dense part; None: flatten (cnn, alexnet) or the backbone's own
    # global average pooling (resnet, resnet50, xception).
    features: Literal["flatten", "avg", "max"] | None = None
    dense_units: Widths  # hidden dense layers, before the softmax head
    dense_bias: bool = True
    activation: KerasId = "relu"
    dense_activation: KerasId | None = None  # hidden dense layers; None: `activation`
    norm: Literal["none", "before", "after"] = "none"  # BatchNorm relative to the activation
    # Which layers get that BatchNorm: conv blocks, hidden dense layers, the output (Dense →
    # BN → softmax, notebook 001's AlexNet).
    norm_at: list[Literal["conv", "dense", "output"]] = ["conv", "dense"]
    input_norm: bool = False  # BatchNorm on the input layer
    # Weight of the old value in BatchNorm's moving mean/variance, which testing uses. Keras'
    # 0.99 averages over ~100 steps: a schedule of a few hundred steps ends with statistics
    # that lag the weights (test accuracy collapses while training accuracy is fine).
    bn_momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.99
    input_dropout: Probability = 0.0
    dropout: Probability = 0.0  # rate of the dense part's dropout, placed per dropout_at
    # "features": before the first dense layer; "hidden": after each hidden dense layer.
    dropout_at: list[Literal["features", "hidden"]] = ["features", "hidden"]
    initializer: KerasId = "glorot_uniform"
    dense_initializer: KerasId | None = None  # dense layers and head; None: `initializer`
    init_biases: bool = False  # biases start from the kernels' initializer too (notebook 001)
    kernel_regularizer: KerasId | None = None
    bias_regularizer: KerasId | None = None
    optimizer: str = "adam"
    learning_rate: Annotated[float, Field(gt=0.0, le=MAX_LEARNING_RATE)] = 1e-3
    optimizer_config: dict[str, Any] = {}  # extra optimizer arguments, e.g. momentum
    # cosine: the rate decays from learning_rate to 0 over all epochs, so short schedules end
    # on settled weights instead of the noise of a constant step.
    lr_schedule: Literal["constant", "cosine"] = "constant"
    epochs: Annotated[int, Field(gt=0, le=MAX_EPOCHS)]
    batch_size: Annotated[int, Field(gt=0, le=MAX_BATCH_SIZE)]
    early_stopping: EarlyStopping | None = None  # None: exactly `epochs` epochs
    # Validation accuracy this many times per epoch (evenly spaced in training steps, plus
    # once before the first step) on the first `val_subset` validation images: steps to the
    # target accuracy at step resolution (steps.csv). 1: per epoch only, no extra evaluation.
    val_per_epoch: Annotated[int, Field(gt=0, le=100)] = 1
    val_subset: PositiveInt | None = None  # None: the whole validation split
    # Transfer: start from the weights of variant `init_from` of the same study (same seed,
    # trained first), all layers but the head; `freeze` keeps those layers fixed.
    init_from: str | None = None
    freeze: bool = False
    # A source layer whose weights do not fit the target's (a first conv on 1-channel MNIST
    # vs 3-channel images): "error" stops; "spread_channels" sums the kernel over the source's
    # input channels and spreads it evenly over the target's, so a gray image (equal
    # channels) gives the source's response.
    transfer_mismatch: Literal["error", "spread_channels"] = "error"
    copy_head: bool = False  # transfer the softmax head too (same class count; notebook 001)
    # Pretrained backbone weights from a local file (e.g. Xception ImageNet .h5), checked
    # against its sha256 before loading; None = random initialization.
    weights_file: str | None = None
    weights_sha256: str | None = None
    # Or a key of data.weights: the file the `weights` stage provisioned, with its pin there.
    weights: str | None = None
    mixed_precision: bool = False  # float16 compute (GPU runs); float32 variables either way
    seed: Seed = 0  # set per run from the study's `seeds`

    @field_validator("activation", "dense_activation", "initializer", "dense_initializer",
                     "kernel_regularizer", "bias_regularizer", "optimizer_config")
    @classmethod
    def _finite_arguments(cls, value: Any) -> Any:
        """Free-form Keras arguments escape the schema's types: a NaN, an infinity or a
        `!!binary` value would reach Keras (and the fingerprint's JSON): refuse them here."""
        where = non_finite(value)
        if where is not None:
            path, number = where
            if isinstance(number, float):
                raise ValueError(f"{path or 'the value'} must be a finite number (got {number})")
            raise ValueError(f"{path or 'the value'} must be a number, text, true/false, null, "
                             f"a list or a mapping (got {type(number).__name__})")
        return value

    @field_validator("activation", "dense_activation", "initializer", "dense_initializer",
                     "kernel_regularizer", "bias_regularizer")
    @classmethod
    def _keras_object(cls, value: Any) -> Any:
        """A serialized Keras object is {class_name: text, config: a mapping} (config optional),
        what Keras' `get` and `deserialize` read."""
        if isinstance(value, dict) and (not isinstance(value.get("class_name"), str)
                                        or not isinstance(value.get("config", {}), dict)):
            raise ValueError("must be a Keras name or {class_name: <name>, config: {<arguments>}} "
                             f"(got {excerpt(value)})")
        return value

    def is_own_or_ablated(self) -> bool:
        """A network of your own, or any network with layers removed or replaced."""
        return isinstance(self.model, Network) or any(getattr(self, k) for k in ABLATION_KEYS)

    @model_validator(mode="before")
    @classmethod
    def _own_network_has_no_zoo_widths(cls, data: Any) -> Any:
        """conv_filters and dense_units are required for the zoo, not for your own network."""
        if isinstance(data, dict) and isinstance(data.get("model"), dict):
            return {"conv_filters": [], "dense_units": [], **data}
        return data

    @model_validator(mode="after")
    def _settings_take_effect(self) -> Variant:
        if isinstance(self.model, Network):
            given = sorted(ZOO_ONLY & self.model_fields_set
                           - {k for k in ("conv_filters", "dense_units") if not getattr(self, k)})
            if given:
                raise ValueError(f"{given[0]}: shapes the zoo's networks only; your own network "
                                 "(model.file/builder) keeps its layers: change them with "
                                 "ablate.replace, or in the network itself")
        if self.weights_sha256 is not None and self.weights_file is None:
            raise ValueError("weights_sha256 is set but weights_file is not")
        if self.weights is not None and self.weights_file is not None:
            raise ValueError("weights and weights_file: set one (a provisioned file or a local one)")
        return self


def non_finite(value: Any) -> tuple[str, Any] | None:
    """(key path inside `value`, the value) of its first NaN, infinity or bytes (YAML's
    `!!binary`), else None. A loop, not recursion: a deeply nested value must not exhaust
    Python's stack."""
    pending: list[tuple[str, Any]] = [("", value)]
    while pending:
        path, item = pending.pop()
        if (isinstance(item, float) and not math.isfinite(item)) or isinstance(item, bytes):
            return path, item
        if isinstance(item, dict):
            pending.extend((f"{path}.{key_text(key)}".lstrip("."), inner)
                           for key, inner in item.items())
        elif isinstance(item, list):
            pending.extend((f"{path}[{i}]", inner) for i, inner in enumerate(item))
    return None


Overrides = dict[str, Any]
NO_LEVEL = "none"  # a factor level left out of variant names (relu-bn, not relu-bn-none)


FULL = "full"  # the unablated network: an ablation study's variant and default baseline


class LayerPrefix(Strict):
    prefix: LayerName


class Ablate(Strict):
    """A study's `ablate:` block: the components of its network, each left out in turn.
    Variant names come from the components: no-<layer>, no-<group>, <layer>-<new kind>."""

    layers: list[LayerName] = []  # one variant per layer removed
    groups: dict[str, list[LayerName] | LayerPrefix] = {}  # several removed together
    # layer → a Keras layer config, e.g. {class_name: Activation, config: {activation: tanh}}
    replace: dict[LayerName, dict[str, Any]] = {}

    @model_validator(mode="after")
    def _not_empty(self) -> Ablate:
        if not (self.layers or self.groups or self.replace):
            raise ValueError("lists no component: give layers, groups or replace")
        if len(set(self.layers)) != len(self.layers):
            raise ValueError(f"layers: names must be distinct (got {self.layers})")
        for layer, spec in self.replace.items():
            if not isinstance(spec.get("class_name"), str) or set(spec) - {"class_name", "config"}:
                raise ValueError(f"replace.{layer}: must be {{class_name: <Keras layer>, "
                                 f"config: {{…}}}} (got {excerpt(spec)})")
        return self

    def variants(self) -> dict[str, Overrides]:
        """Variant name → overrides: the full network first, then each component."""
        out: dict[str, Overrides] = {FULL: {}}

        def add(name: str, overrides: Overrides) -> None:
            if name in out:
                raise ValueError(f"two components both make a variant named {name!r}")
            out[name] = overrides

        for layer in self.layers:
            add(f"no-{layer}", {"remove_layers": [layer]})
        for label, group in self.groups.items():
            add(f"no-{label}", {"remove_prefixes": [group.prefix]} if isinstance(group, LayerPrefix)
                else {"remove_layers": list(group)})
        for layer, spec in self.replace.items():
            kind = (spec.get("config") or {}).get("activation")
            kind = kind if isinstance(kind, str) else spec["class_name"]
            add(f"{layer}-{kind}", {"replace_layers": {layer: spec}})
        return out


class Study(Strict):
    question: str
    data: str  # a key of data.prepared
    # Every variant is trained once per seed; results are mean ± 95% confidence interval.
    # Or {min, max}: seeds added round by round where answers are undecided (SeedRange).
    seeds: Seeds = [0]
    baseline: str  # the variant every other one is compared with in the verdict
    # Further pairs [a, b] the question asks about (a − b), e.g. [before, after] in bn_placement.
    also_compare: list[Annotated[tuple[str, str], Field(strict=False)]] = []  # YAML has no tuples
    target_val_accuracy: Annotated[float, Field(gt=0.0, le=1.0)]  # for epochs-to-target
    # What this budget changed that every answer rests on, beyond data, epochs and seeds (a
    # stand-in network): appended to the study's budget sentence in the results and report.
    budget_note: str | None = None
    # Points of test accuracy: a difference inside ± margin is practically none (equivalence).
    margin: Annotated[float, Field(gt=0.0, le=MAX_MARGIN)] = DEFAULT_MARGIN
    defaults: dict[str, Any]
    # A factorial design: factor → level → overrides. Its variants are the cross product of the
    # levels, named by their level names joined with '-' in factor order, levels named `none`
    # left out (the all-`none` cell is named `none`). They are merged into `variants` when the
    # study is read; an explicit variant of the same name adds its overrides to that cell.
    factors: dict[str, dict[str, Overrides | None]] = {}
    # Leave-one-component-out: the full network (variant `full`, the default baseline) and one
    # variant per component removed or replaced (see Ablate); merged into `variants` like
    # factors, an explicit variant of the same name adds its overrides.
    ablate: Ablate | None = None
    variants: dict[str, Overrides | None] = {}

    @model_validator(mode="before")
    @classmethod
    def _expand_ablate(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("ablate"), dict):
            return data
        try:
            ablate = Ablate.model_validate(data["ablate"])
        except ValidationError as error:
            raise ValueError(format_errors(error, "ablate")) from None
        explicit = data.get("variants") or {}
        if not isinstance(explicit, dict):
            return data
        generated = ablate.variants()
        clash = sorted(set(generated) & set(factorial_cells(data.get("factors") or {})))
        if clash:
            raise ValueError(f"ablate: variant {clash[0]!r} is also a factorial cell; rename a level")
        merged = {name: {**overrides, **(explicit.get(name) or {})}
                  for name, overrides in generated.items()}
        return {**data, "baseline": data.get("baseline", FULL),
                "variants": {**merged, **{n: v for n, v in explicit.items() if n not in merged}}}

    @model_validator(mode="before")
    @classmethod
    def _expand_factors(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("factors"), dict):
            return data
        cells = factorial_cells(data["factors"])
        explicit = data.get("variants") or {}
        if not isinstance(explicit, dict):
            return data
        merged = {name: {**overrides, **(explicit.get(name) or {})}
                  for name, (_, overrides) in cells.items()}
        return {**data, "variants": {**merged, **{n: v for n, v in explicit.items() if n not in merged}}}

    @model_validator(mode="after")
    def _check(self) -> Study:
        if not self.variants:
            raise ValueError("a study needs at least one variant")
        if self.baseline not in self.variants:
            raise ValueError(f"baseline {self.baseline!r} is not one of the variants {sorted(self.variants)}")
        for pair in self.also_compare:
            if not set(pair) <= set(self.variants) or pair[0] == pair[1]:
                raise ValueError(f"also_compare {list(pair)}: needs two different variants of "
                                 f"{sorted(self.variants)}")
        if isinstance(self.seeds, list) and len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct (got {self.seeds})")
        for name, overrides in {"defaults": self.defaults, **self.variants}.items():
            if "seed" in (overrides or {}):
                raise ValueError(f"{name}.seed: not allowed, set the study's `seeds` list instead")
        return self

    def data_of(self, name: str) -> str:
        """The prepared dataset variant `name` trains and is tested on."""
        return {**self.defaults, **(self.variants[name] or {})}.get("data") or self.data

    def levels(self) -> dict[str, dict[str, str]]:
        """Variant name → {factor: level} for every cell of the factorial design ({} if none)."""
        return {name: cell for name, (cell, _) in factorial_cells(self.factors).items()}

    @property
    def sequential(self) -> bool:
        """Seeds given as a range: spent round by round (ablations.sequential)."""
        return isinstance(self.seeds, SeedRange)

    def first_seeds(self) -> list[int]:
        """The seeds every variant trains: the list, or a range's first `min` (0 … min−1)."""
        return list(range(self.seeds.min)) if self.sequential else list(self.seeds)

    def source_of(self, name: str) -> str | None:
        """The variant `name` starts from (transfer), if any."""
        return (self.variants[name] or {}).get("init_from") or self.defaults.get("init_from")

    def seeds_of(self, name: str, allocation: dict[str, int] | None = None) -> list[int]:
        """The seeds variant `name` trains: 0 … allocation[name]−1 in a sequential study's
        round (ablations.sequential), else first_seeds()."""
        if allocation is not None and self.sequential:
            return list(range(allocation[name]))
        return self.first_seeds()

    def units(self, allocation: dict[str, int] | None = None) -> list[tuple[str, int]]:
        """(variant, seed) of every training of the study (seeds_of), sources of transfers
        first."""
        names = list(self.variants)
        sources = {self.source_of(n) for n in names}
        ordered = [n for n in names if n in sources] + [n for n in names if n not in sources]
        return [(name, seed) for name in ordered for seed in self.seeds_of(name, allocation)]


def factorial_cells(factors: dict[str, dict[str, Overrides | None]]
                    ) -> dict[str, tuple[dict[str, str], Overrides]]:
    """Variant name → ({factor: level}, merged overrides) over the cross product of `factors`.
    Raises ValueError (pydantic reports it under the study's key) for a design that cannot be
    read unambiguously: a factor without levels, two factors setting one key, two cells
    named alike."""
    if not factors:
        return {}  # the product of no factors would be one empty cell
    for factor, levels in factors.items():
        names = [factor, *levels] if isinstance(levels, dict) else [factor]
        odd = [name for name in names if not isinstance(name, str)]
        if odd:  # names become variant names: text only (YAML reads `1:` or `null:` otherwise)
            raise ValueError(f"factors.{key_text(factor)}: factor and level names must be text "
                             f"(got {odd[0]!r})")
        if not isinstance(levels, dict) or not levels:
            raise ValueError(f"factors.{factor}: needs a mapping of at least one level name to "
                             "its overrides")
        for level, overrides in levels.items():
            if overrides is not None and not isinstance(overrides, dict):
                raise ValueError(f"factors.{factor}.{level}: must be a mapping of overrides")
            unknown = set(overrides or {}) - set(Variant.model_fields) | ({"seed"} & set(overrides or {}))
            if unknown:
                first = key_text(sorted(unknown, key=str)[0])
                raise ValueError(f"factors.{factor}.{level}.{first}: unknown or "
                                 f"not allowed key (a variant has {sorted(set(Variant.model_fields) - {'seed'})})")
    owner: dict[str, str] = {}
    for factor, levels in factors.items():
        for key in {k for overrides in levels.values() for k in (overrides or {})}:
            if owner.setdefault(key, factor) != factor:
                raise ValueError(f"factors {owner[key]} and {factor} both set {key!r}: each key "
                                 "belongs to one factor")
    cells: dict[str, tuple[dict[str, str], Overrides]] = {}
    cells_count = math.prod(len(levels) for levels in factors.values())
    if cells_count > MAX_VARIANTS:  # checked before the product is built
        raise ValueError(f"factors: {cells_count} cells; allowed: at most {MAX_VARIANTS} variants")
    for combination in itertools.product(*(list(levels.items()) for levels in factors.values())):
        named = [level for level, _ in combination if level != NO_LEVEL]
        name = "-".join(named) or NO_LEVEL
        if name in cells:
            raise ValueError(f"factors: two cells are both named {name!r}; rename a level")
        overrides = {k: v for _, level_overrides in combination for k, v in (level_overrides or {}).items()}
        cells[name] = (dict(zip(factors, (level for level, _ in combination))), overrides)
    return cells


class PolyfitConfig(Strict):
    """params.yaml's `polyfit:` block: data from a known polynomial, k-fold CV per degree."""

    coefficients: list[StrictFloat] = Field(min_length=1, max_length=MAX_DEGREE + 1)  # increasing powers: c0 + c1 x + …
    noise: StrictFloat = Field(ge=0, allow_inf_nan=False)  # std of the Gaussian noise, y units
    folds: StrictInt = Field(ge=2, le=MAX_FOLDS)
    n: StrictInt = Field(le=MAX_SAMPLES)  # samples
    # x ~ Uniform(lo, hi); a YAML list (YAML has no tuples)
    x_range: Annotated[tuple[StrictFloat, StrictFloat], Field(strict=False)]
    max_degree: StrictInt = Field(ge=1, le=MAX_DEGREE)  # degrees 1..max_degree are scored
    seed: StrictInt = Field(ge=0, le=MAX_SEED)  # data and fold shuffle of draw i: seed + i
    # The whole selection is repeated on `draws` data sets: how often each degree is chosen
    # answers the question, not one hand-picked draw.
    draws: StrictInt = Field(default=1, ge=1, le=10_000)

    @field_validator("coefficients")
    @classmethod
    def _last_nonzero(cls, value: list[float]) -> list[float]:
        if not all(math.isfinite(c) for c in value):
            raise ValueError("must be finite numbers")
        if value[-1] == 0:
            raise ValueError("the last (highest-power) coefficient must be non-zero")
        return value

    @field_validator("n")
    @classmethod
    def _n_at_least_folds(cls, value: int, info: ValidationInfo) -> int:
        folds = info.data.get("folds")
        if folds is not None and value < folds:
            raise ValueError(f"must be >= polyfit.folds ({folds}), got {value}")
        return value

    @field_validator("x_range")
    @classmethod
    def _increasing(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not (math.isfinite(value[0]) and math.isfinite(value[1]) and value[0] < value[1]):
            raise ValueError(f"must be [lo, hi] with finite lo < hi, got {list(value)}")
        return value

    @field_validator("max_degree")
    @classmethod
    def _covers_truth(cls, value: int, info: ValidationInfo) -> int:
        coefficients = info.data.get("coefficients")
        if coefficients and value < len(coefficients) - 1:
            raise ValueError(
                f"must be >= the true degree len(coefficients) - 1 = {len(coefficients) - 1}"
            )
        return value

    @property
    def true_degree(self) -> int:
        return len(self.coefficients) - 1


class Shrink(Strict):
    """A smoke run of any budget (conf/overlay/smoke.yaml): the same networks and datasets, on
    at most `images_per_class` images per class in each split, at most `epochs` epochs, the
    first `seeds` seeds of each study, and factorial studies cut to `levels_per_factor` levels
    of each factor (the baseline's level, then the first others): a smaller full-factorial
    design with the same baseline. Variants outside the factors are all kept."""

    images_per_class: PositiveInt
    epochs: PositiveInt
    seeds: PositiveInt
    levels_per_factor: Annotated[int, Field(ge=2)] | None = None  # None: every level


class Params(Strict):
    budget: str = "laptop"  # the conf/budget/ file params.yaml was composed with
    shrink: Shrink | None = None  # set by an overlay (conf/overlay/); None: the budget as written
    data: DataConfig
    studies: dict[str, Study]
    polyfit: PolyfitConfig

    @model_validator(mode="after")
    def _names_are_folder_names(self) -> Params:
        named = [("data.prepared", list(self.data.prepared)), ("studies", list(self.studies))]
        named += [(f"studies.{name}.variants", list(study.variants))
                  for name, study in self.studies.items()]
        for where, names in named:
            for name in names:
                if len(name) > MAX_NAME_LENGTH or not NAME_PATTERN.fullmatch(name):
                    raise ValueError(f"{where}: the name {excerpt(name)} is not allowed; names "
                                     "are folder names: letters, digits and _ . + - (not first), "
                                     f"at most {MAX_NAME_LENGTH} characters")
            if where.endswith(".variants") and len(names) > MAX_VARIANTS:
                raise ValueError(f"{where}: {len(names)} variants; allowed: at most {MAX_VARIANTS}")
        return self

    @model_validator(mode="after")
    def _studies_use_prepared_data(self) -> Params:
        for name, study in self.studies.items():
            if study.data not in self.data.prepared:
                raise ValueError(
                    f"studies.{name}.data={study.data!r} is not one of data.prepared "
                    f"{sorted(self.data.prepared)}"
                )
        return self

    def input_shape(self, data: str) -> tuple[tuple[int, int, int], int]:
        """(image shape, number of classes) of prepared dataset `data`."""
        prepared = self.data.prepared[data]
        height, width, channels = IMAGE_SHAPES[prepared.source]
        if prepared.size:
            height = width = prepared.size
        classes = prepared.classes or CLASS_NAMES[prepared.source]
        return (height, width, channels), len(classes)

    def variant(self, study: str, name: str, seed: int | None = None) -> Variant:
        """The resolved config of one variant (already validated by `load_params`); `seed`
        defaults to the study's first."""
        return resolve_variant(self, study, name, seed)

    def variant_data(self, study: str, name: str) -> str:
        """The prepared dataset a variant trains on."""
        return self.studies[study].data_of(name)


_BOUNDS = (("Input should be greater than or equal to", "must be >="),
           ("Input should be greater than", "must be >"),
           ("Input should be less than or equal to", "must be <="),
           ("Input should be less than", "must be <"),
           ("Input should be a valid integer", "must be a whole number"),
           ("Input should be a valid number", "must be a number"),
           ("Input should be a finite number", "must be a finite number"),
           ("Input should be a valid boolean", "must be true or false"),
           ("Input should be a valid string", "must be a string"),
           ("Input should be a valid list", "must be a list"),
           ("Input should be a valid dictionary", "must be a mapping"),
           ("Input should be", "must be"))
# A bad value is quoted, never echoed whole: it may be a huge list or string.
_EXCERPT = reprlib.Repr()  # keyword arguments need Python 3.12
_EXCERPT.maxlevel, _EXCERPT.maxdict, _EXCERPT.maxlist, _EXCERPT.maxtuple = 2, 4, 6, 6
_EXCERPT.maxstring = _EXCERPT.maxother = 40


def excerpt(value: Any, limit: int = 80) -> str:
    """A short quote of `value` for an error message: at most `limit` characters."""
    return shorten(_EXCERPT.repr(value), limit)


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def key_text(key: Any) -> str:
    """A key as an error message names it: as written when it is plain printable text, else
    quoted (an empty key, a key with a newline or spaces around it, a number)."""
    if isinstance(key, str) and key and key.isprintable() and key.strip() == key:
        return key
    return repr(key)


def _describe(item: dict[str, Any], prefix: str) -> str:
    loc = [part for part in item["loc"] if not str(part).startswith("<")]  # union tags (Seeds)
    path = ".".join([prefix] * bool(prefix)
                    + [str(part) if isinstance(part, int) else key_text(part) for part in loc])
    if item["type"] == "extra_forbidden":
        return f"{path}: unknown key"
    if item["type"] == "missing":
        return f"{path}: required key is missing"
    message = item["msg"].removeprefix("Value error, ")
    if item["type"] == "value_error":  # our own checks: the message names the value already
        return f"{path}: {shorten(message, 300)}" if path else shorten(message, 300)
    if item["type"] in ("too_long", "too_short"):
        bound = "at most" if item["type"] == "too_long" else "at least"
        limit = item["ctx"]["max_length" if item["type"] == "too_long" else "min_length"]
        return f"{path}: must have {bound} {limit} entries (got {item['ctx']['actual_length']})"
    message = re.sub(r"a valid dictionary or instance of \w+", "a mapping", message)
    for verbose, short in _BOUNDS:
        message = message.replace(verbose, short)
    hint = ""
    if item["type"] == "bool_type" and str(item["input"]).lower() in _YAML11_BOOLEANS:
        hint = "; YAML 1.2, as DVC reads it, takes yes/no/on/off as text"
    return f"{path}: {message} (got {excerpt(item['input'])}{hint})"


_YAML11_BOOLEANS = {"yes", "no", "on", "off", "y", "n"}
MAX_ERRORS_SHOWN = 5


def format_errors(error: ValidationError, prefix: str = "") -> str:
    """One line naming every bad key path, what is wrong and (a short excerpt of) what was given."""
    items = error.errors()
    shown = [_describe(item, prefix) for item in items[:MAX_ERRORS_SHOWN]]
    more = len(items) - len(shown)
    return "; ".join(shown + ([f"and {more} more"] if more else []))


def resolve_variant(params: Params, study: str, name: str, seed: int | None = None) -> Variant:
    if study not in params.studies:
        raise ConfigError(f"studies.{study}: no such study (have {sorted(params.studies)})")
    spec = params.studies[study]
    if name not in spec.variants:
        raise ConfigError(
            f"studies.{study}.variants.{name}: no such variant (have {sorted(spec.variants)})"
        )
    merged = {**spec.defaults, **(spec.variants[name] or {}),
              "seed": spec.first_seeds()[0] if seed is None else seed}
    where = f"studies.{study}.variants.{name}"
    try:
        cfg = Variant.model_validate(merged)
    except ValidationError as error:
        raise ConfigError(format_errors(error, where)) from None
    if params.shrink is not None and cfg.epochs > params.shrink.epochs:
        cfg = cfg.model_copy(update={"epochs": params.shrink.epochs})
    if cfg.data is not None and cfg.data not in params.data.prepared:
        raise ConfigError(f"{where}.data: {cfg.data!r} is not one of data.prepared "
                          f"{sorted(params.data.prepared)}")
    if cfg.weights is not None and cfg.weights not in params.data.weights:
        raise ConfigError(f"{where}.weights: {cfg.weights!r} is not one of data.weights "
                          f"{sorted(params.data.weights)}")
    if cfg.freeze and cfg.init_from is None and cfg.weights_file is None and cfg.weights is None:
        raise ConfigError(f"{where}.freeze: true needs init_from (a variant to copy), "
                          "weights_file or weights (pretrained weights): there is nothing to freeze")
    if cfg.init_from is not None:
        source = spec.variants.get(cfg.init_from, False)
        if source is False or cfg.init_from == name:
            raise ConfigError(f"{where}.init_from: {cfg.init_from!r} is not another variant of "
                              f"the study (have {sorted(spec.variants)})")
        if (source or {}).get("init_from") or spec.defaults.get("init_from"):
            raise ConfigError(f"{where}.init_from: {cfg.init_from!r} itself starts from another "
                              "variant; chains are not supported")
    return cfg


# Aliases (*name) let one anchored value stand for many; "billion laughs" files nest them so
# that a few lines expand to billions of values. The repository's params.yaml has ~700 values.
MAX_YAML_VALUES = 100_000
MAX_PARAMS_BYTES = 10 << 20  # the repository's params.yaml is ~8 KB
# Mappings and lists inside each other; the repository's params.yaml nests 8 deep. The YAML
# loader builds nested values recursively in C: ~50,000 levels of `[` (100 KB) crash Python.
MAX_NESTING = 64


def read_yaml(path: Path) -> dict[str, Any]:
    """The file as DVC reads it (its own parser: ruamel.yaml, YAML 1.2, duplicate keys refused),
    so `1e-4` is a float and `yes` a string for both; any problem is one ConfigError line."""
    from dvc.utils.serialize._yaml import YAMLFileCorruptedError, parse_yaml

    try:
        size = Path(path).stat().st_size
        if size > MAX_PARAMS_BYTES:
            raise ConfigError(f"{path}: {size:,} bytes; allowed: at most {MAX_PARAMS_BYTES:,}")
        data = Path(path).read_bytes()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read ({error.strerror})") from None
    try:
        text = data.decode("utf-8")  # DVC opens params files as UTF-8 too
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{data[error.start]:02x} at offset "
                          f"{error.start}); save it as UTF-8") from None
    try:
        _check_nesting(text, path)
        loaded = parse_yaml(text, str(path))
    except YAMLFileCorruptedError as error:
        raise ConfigError(f"{path}: malformed YAML: {_yaml_problem(error.__cause__)}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    _check_expanded_size(loaded, path)
    return loaded


def _check_nesting(text: str, path: Path) -> None:
    """Refuse values nested deeper than MAX_NESTING before the loader builds them: the parser's
    event stream (a loop over the text, nothing built) counts the levels."""
    from dvc.utils.serialize._yaml import YAMLFileCorruptedError
    from ruamel.yaml import YAML, YAMLError
    from ruamel.yaml.events import CollectionEndEvent, CollectionStartEvent

    depth = 0
    try:
        for event in YAML(typ="safe").parse(text):
            if isinstance(event, CollectionStartEvent):
                depth += 1
                if depth > MAX_NESTING:
                    mark = event.start_mark
                    raise ConfigError(f"{path}: values nested more than {MAX_NESTING} levels "
                                      f"deep at line {mark.line + 1}, column {mark.column + 1}; "
                                      f"allowed: at most {MAX_NESTING}")
            elif isinstance(event, CollectionEndEvent):
                depth -= 1
    except YAMLError as error:  # as parse_yaml reports it
        raise YAMLFileCorruptedError(str(path)) from error


def _yaml_problem(error: BaseException | None) -> str:
    """ruamel's several-line report as one line: what, where (1-based, as editors count)."""
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return shorten(problem, 160) + where


def _check_expanded_size(loaded: Any, path: Path) -> None:
    """Refuse a file whose aliases expand to more than MAX_YAML_VALUES values or MAX_NESTING
    levels (the loader shares one object per anchor; validation and error messages would
    expand it)."""
    pending, count = [(loaded, 1)], 0
    while pending:
        value, depth = pending.pop()
        count += 1
        if count > MAX_YAML_VALUES:
            raise ConfigError(f"{path}: more than {MAX_YAML_VALUES} values once YAML aliases "
                              "(*name) are expanded; allowed: at most that many (write the "
                              "values out or use fewer aliases)")
        if depth > MAX_NESTING and isinstance(value, (dict, list)):
            raise ConfigError(f"{path}: values nested more than {MAX_NESTING} levels deep once "
                              f"YAML aliases (*name) are expanded; allowed: at most {MAX_NESTING}")
        if isinstance(value, dict):
            pending.extend((key, depth + 1) for key in value)
            pending.extend((inner, depth + 1) for inner in value.values())
        elif isinstance(value, list):
            pending.extend((inner, depth + 1) for inner in value)


def budgets(conf_dir: Path, group: str = "budget") -> list[str]:
    return sorted(path.stem for path in (conf_dir / group).glob("*.yaml"))


def compose_budget(budget: str, out: Path, conf_dir: Path, overlay: str | None = None) -> None:
    """Write `out` as `dvc exp run -S budget=BUDGET [-S overlay=OVERLAY]` writes params.yaml:
    conf/config.yaml composed with conf/budget/BUDGET.yaml (and conf/overlay/OVERLAY.yaml) by
    DVC's own Hydra call (DVC's default config_dir `conf` and config_name `config`)."""
    overrides = [f"budget={budget}"]
    for group, name in (("budget", budget), ("overlay", overlay)):
        if name is not None and name not in budgets(conf_dir, group):
            raise ConfigError(f"{group} {name!r}: no {conf_dir}/{group}/{name}.yaml "
                              f"(have {budgets(conf_dir, group)})")
    if overlay is not None:
        overrides.append(f"overlay={overlay}")
    from dvc.utils.hydra import compose_and_dump

    try:
        compose_and_dump(out, str(conf_dir.resolve()), None, "config",
                         str(conf_dir.resolve().parent), overrides)
    except Exception as error:  # noqa: BLE001 Hydra's and OmegaConf's many error classes
        raise ConfigError(f"{conf_dir}: cannot compose budget {budget!r}: "
                          f"{str(error).splitlines()[0]}") from None


def load_params(path: str | Path = "params.yaml", budget: str | None = None,
                overlay: str | None = None) -> Params:
    """Validate the whole params file, every variant included; raise one ConfigError. With
    `budget`, the file is that budget's composition (with `overlay`) from the conf/ folder
    beside `path` (what `dvc exp run -S budget=…` would write), not `path` itself."""
    if budget is not None:
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            composed = Path(folder) / "params.yaml"
            compose_budget(budget, composed, Path(path).parent / "conf", overlay)
            return _validated(read_yaml(composed), f"budget {budget}")
    return _validated(read_yaml(Path(path)), path)


def _validated(raw: dict[str, Any], path) -> Params:
    try:
        params = shrunk(Params.model_validate(raw))
    except ValidationError as error:
        raise ConfigError(f"{path}: {format_errors(error)}") from None
    for study, spec in params.studies.items():
        for name in spec.variants:
            resolve_variant(params, study, name)
    return params


def shrunk(params: Params) -> Params:
    """`params` under its `shrink` overlay: every prepared dataset capped at images_per_class
    images per kept class in each split, every study cut to its first `seeds` seeds (polyfit to
    as many draws) and its factors to `levels_per_factor` levels (epochs are capped where a
    variant is resolved, which covers defaults, variants and factors)."""
    if params.shrink is None:
        return params
    per_class = params.shrink.images_per_class
    prepared = {}
    for name, data in params.data.prepared.items():
        classes = len(data.classes or CLASS_NAMES[data.source])
        prepared[name] = data.model_copy(update={
            cap: min(getattr(data, cap) or MAX_IMAGES, per_class * classes)
            for cap in ("max_train", "max_val", "max_test")})
    studies = {name: _fewer_levels(study.model_copy(update={
                   "seeds": _first_seeds(study.seeds, params.shrink.seeds)}),
                   params.shrink.levels_per_factor)
               for name, study in params.studies.items()}
    polyfit = params.polyfit.model_copy(  # its repeated data sets are its seeds
        update={"draws": min(params.polyfit.draws, params.shrink.seeds)})
    return params.model_copy(update={"data": params.data.model_copy(update={"prepared": prepared}),
                                     "studies": studies, "polyfit": polyfit})


def _first_seeds(seeds, count: int):
    """A seed list's first `count`, or a seed range that stops after `count` seeds."""
    if isinstance(seeds, SeedRange):
        return SeedRange(min=min(count, seeds.min), max=min(count, seeds.max))
    return seeds[:count]


def _fewer_levels(study: Study, count: int | None) -> Study:
    """`study` with each factor cut to `count` levels, the baseline's first; the cells (and
    `also_compare` pairs) of dropped levels go, variants outside the factors stay."""
    if count is None or not study.factors:
        return study
    cells, base = study.levels(), study.levels().get(study.baseline, {})
    kept = {factor: sorted(levels, key=lambda level: level != base.get(factor))[:count]
            for factor, levels in study.factors.items()}  # stable: the others in their order
    dropped = {name for name, cell in cells.items()
               if any(cell[factor] not in kept[factor] for factor in cell)}
    return study.model_copy(update={
        "factors": {f: {level: study.factors[f][level] for level in kept[f]} for f in kept},
        "variants": {n: v for n, v in study.variants.items() if n not in dropped},
        "also_compare": [pair for pair in study.also_compare if not set(pair) & dropped]})


def polyfit_config(block: Any, prefix: str = "polyfit") -> PolyfitConfig:
    """Validate a `polyfit:` block on its own; any problem -> one ConfigError naming every bad
    key path."""
    if isinstance(block, PolyfitConfig):
        return block
    if not isinstance(block, dict):
        raise ConfigError(f"{prefix}: must be a mapping, got {type(block).__name__}")
    try:
        return PolyfitConfig.model_validate(block)
    except ValidationError as error:
        raise ConfigError(format_errors(error, prefix)) from None
