"""The image classifier's `params.yaml` section (`image_classifier.<stage>.<key>`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator

from components.config import (
    Fraction,
    HeldOut,
    LoaderParams,
    ModelName,
    OptimParams,
    PartParams,
    PositiveFloat,
    PositiveInt,
    Probability,
    RegisterParams,
    SearchDim,
    Section,
    Seed,
    TuneParams,
    WorkloadParams,
    dims,
    knob,
    register_field,
)
from components.workloads.modules import SPEC

ARCHS = ("simplenet", "convnet", "convbnnet", "resnet", "resnet18")


def _arch(v: str) -> str:
    if v in ARCHS or SPEC.match(v):
        return v
    raise ValueError(f"{v!r} is none of {' | '.join(ARCHS)}, nor a model by import path "
                     "(package.module:factory, torchvision:NAME)")


Arch = Annotated[str, AfterValidator(_arch)]


class Mirror(Section):
    """Where to download one file of a data set, and its md5."""

    url: str
    md5: str = knob(..., "the file's md5", pattern=r"^[0-9a-fA-F]{32}$")


class ImagePrepareParams(HeldOut):
    """The images: `digits` (scikit-learn's bundled 8x8 digits, offline); `cifar10` or
    `fashion_mnist` (the real archives, downloaded with torchvision's downloader and
    md5-checked); or a folder with one subfolder per class of png/jpg images, under `inputs`."""

    source: str = knob("digits", "digits | cifar10 | fashion_mnist | a folder with one subfolder per class "
                       "(png, jpg, webp, bmp; any size and mode)")
    inputs: str = knob("inputs/image_classifier", "what prepare depends on in dvc.yaml: a local source must be in it")
    mirror: list[Mirror] | None = knob(None, "[{url: ..., md5: ...}, ...] to download from elsewhere")
    on_bad_image: Literal["error", "skip"] = knob("error", "error: stop naming the file; skip: leave it out "
                                                  "and count it")
    image_size: PositiveInt | tuple[PositiveInt, PositiveInt] | None = knob(
        None, "every image brought to this size: N (N x N) or [height, width]; null: the source's own size, "
        "which must then be one size (a folder of mixed sizes needs a value)")
    resize: Literal["center_crop", "plain"] = knob(
        "center_crop", "center_crop: scale to cover image_size (the shorter side, for a square) and crop the "
        "centre, as torchvision's Resize + CenterCrop; plain: resize to image_size exactly, as Resize((h, w))")
    channels: Literal["auto", 1, 3] = knob("auto", "1 (grey) or 3 (RGB); auto: 1 when every image is grey, else 3")
    batch_mb: PositiveInt = knob(32, "decoded pixels held at once (MB): bounds prepare's memory, whatever the "
                                 "source's size; also the Parquet row group")
    threads: PositiveInt = knob(4, "threads decoding images (PIL releases the GIL while it decodes)")
    val_frac: Fraction = knob(0.1, "stratified by class, fixed by seed")
    test_frac: Fraction = knob(0.2, "stratified by class, fixed by seed")
    seed: Seed = knob(0, "the split and the row order")


class ImageNormalizeParams(PartParams):
    """Per-channel statistics of the train pixels, streamed; one Parquet file per split."""

    batch_mb: PositiveInt = knob(32, "pixels read at once (MB, as stored): bounds normalize's memory; also the "
                                 "row group of each split's file, the unit a worker reads")


class ImageTuneParams(TuneParams):
    """The sweep: ASHA over lr, dropout and weight decay, each trial a Ray Train run."""

    num_samples: PositiveInt = knob(4, "trials in the sweep")
    epochs: PositiveInt = knob(6, "ASHA's max_t (one report per epoch)")
    steps_per_epoch: PositiveInt | None = knob(None, "steps per trial epoch; null: every train image once")
    pass_frac: PositiveFloat = knob(1.0, "a trial epoch as a fraction of a pass (when steps_per_epoch is null)")
    min_steps: PositiveInt = knob(1, "the fewest steps in a trial epoch (when steps_per_epoch is null)")
    grace_period: PositiveInt = knob(2, "ASHA: epochs before a trial can be stopped")
    space: dict[str, SearchDim] = knob(
        lambda: dims(lr={"type": "loguniform", "low": 0.001, "high": 0.02},
                     dropout={"type": "uniform", "low": 0.0, "high": 0.3},
                     weight_decay={"type": "loguniform", "low": 0.00001, "high": 0.01}),
        "train keys to search: {type: choice|grid, values: [...]} or {type: uniform|loguniform|randint, low, high}")


class ImageTrainParams(LoaderParams, OptimParams):
    """A convnet, data parallel: each worker reads only its row shard, reshuffled every epoch."""

    arch: Arch = knob(
        "resnet", "simplenet | convnet | convbnnet | resnet | resnet18, or your own by import path: "
        "package.module:factory (called with in_shape=(C, H, W), n_classes=K, and dropout= if it takes it) "
        "or torchvision:NAME (random weights, or `weights`)")
    weights: str | None = knob(
        None, "a state-dict file (.pt / .pth) loaded into the model before training, never downloaded (say "
        "torchvision's ImageNet weights saved beforehand): the tensors that fit load, the rest (a classifier of "
        "another size) stay as built; a dep of the stages that build the model (python -m components.cli.stage_deps)")
    epochs: PositiveInt = knob(30, "passes over the train images")
    steps_per_epoch: PositiveInt | None = knob(None, "null: each train image once per epoch "
                                               "(shards padded to equal steps)")
    bs: PositiveInt = knob(64, "images per step in total, split over the workers")
    dropout: Probability = knob(0.0, "before the classifier")
    flip: Literal["auto", True, False] = knob("auto", "random horizontal flips; auto: on, except for digits")
    crop: Literal["auto", True, False] = knob("auto", "pad by size//8 and crop back at random; auto: on")
    tta: bool = knob(True, "predict by the mean over the image and its 4 shifts by size//8 px "
                     "(val, test and the served model alike)")
    lr: PositiveFloat = knob(0.005, "peak learning rate")
    weight_decay: float = knob(1e-4, "weight decay", ge=0)
    clip: PositiveFloat | None = knob(None, "gradient-norm clip; null to turn off")
    schedule: Literal["cosine", "constant", "sgdr", "onecycle"] = knob(
        "onecycle", "cosine | constant | sgdr (warm restarts) | onecycle")


class ImageEvaluateParams(Section):
    """Accuracy, per-class accuracy, confusion matrices and class activation maps."""

    n_cam: PositiveInt = knob(8, "validation images shown with their class activation maps")
    bs: PositiveInt = knob(256, "images scored at once: val and test are read a batch at a time")
    baseline_rows: PositiveInt = knob(20_000, "train images the linear baseline fits on (a seeded sample beyond "
                                      "that; pixels pooled to at most 32 x 32, float32): bounds evaluate's memory")


class ImageRegisterParams(RegisterParams):
    """The MLflow registry: a version per trained model, `champion` only if it beats the current one."""

    model_name: ModelName = knob("image-classifier", "the registered model's name")
    metric: str = knob("accuracy", "val accuracy from metrics/image_classifier/eval.json; the champion is "
                       "re-scored with it, so accuracy / max is the only pair accepted")
    mode: Literal["min", "max"] = knob("max", "min | max")


class ImageClassifierParams(WorkloadParams):
    """Image classifiers from SimpleNet to ResNet-18."""

    BUILTIN_SOURCES = ("digits", "cifar10", "fashion_mnist")
    REPORTED = ("val_loss", "train_loss", "val_accuracy")
    REGISTER_METRIC = ("accuracy", "max")

    prepare: ImagePrepareParams = knob(ImagePrepareParams)
    normalize: ImageNormalizeParams = knob(ImageNormalizeParams)
    tune: ImageTuneParams = knob(ImageTuneParams)
    train: ImageTrainParams = knob(ImageTrainParams)
    evaluate: ImageEvaluateParams = knob(ImageEvaluateParams)
    register_: ImageRegisterParams = register_field(ImageRegisterParams)
