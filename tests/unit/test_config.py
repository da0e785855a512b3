import pytest
import yaml

from components.config import ParamsError
from components.params import load_params, parse_params
from components.workloads.char_lm.params import TrainParams


def test_repo_params_are_valid(repo):
    p = load_params(repo / "params.yaml")
    assert p.char_lm.train.arch == "lstm"
    assert p.char_lm.tune.num_samples >= 6
    assert set(p.char_lm.tune.space) >= {"bptt", "lr", "dropout"}


@pytest.mark.parametrize("raw, expect", [
    ({"char_lm": {"train": {"lr": -1}}}, "params.yaml: char_lm.train.lr: Input should be greater than 0 (got -1)"),
    ({"char_lm": {"tune": {"num_samples": 0}}}, "params.yaml: char_lm.tune.num_samples: Input should be greater than 0"),
    ({"char_lm": {"train": {"arch": "transformer"}}}, "char_lm.train.arch: Input should be 'lstm', 'gru' or 'rnn'"),
    ({"char_lm": {"trian": {}}}, "params.yaml: char_lm.trian: unknown key"),
    ({"char_lm": {"train": {"lr": "fast"}}}, "char_lm.train.lr: Input should be a valid number"),
    ({"char_lm": {"train": {"bs": 63}}}, "char_lm.train: bs (63) must be a multiple of num_workers (2)"),
    ({"char_lm": {"tune": {"space": {}}}}, "char_lm.tune: space is empty"),
    ({"char_lm": {"tune": {"space": {"lr": {"type": "uniform", "low": 0.1, "high": 0.01}}}}},
     "char_lm.tune.space.lr: low (0.1) must be below high (0.01)"),
    ({"char_lm": {"tune": {"space": {"colour": {"type": "choice", "values": [1]}}}}},
     "space names keys that train does not have: ['colour']"),
    ({"char_lm": {"prepare": {"source": "https://example.invalid/x.txt"}}}, "sha256 is required when source is a URL"),
    # values a later library would refuse only after tune and train had run
    ({"char_lm": {"register": {"model_name": "a/b c"}}}, "char_lm.register.model_name: an MLflow model name is"),
    ({"image_classifier": {"register": {"model_name": "cls@v1"}}}, "no '/', ':', '@' or spaces"),
    ({"char_lm": {"train": {"seed": -1}}}, "char_lm.train.seed: Input should be greater than or equal to 0"),
    ({"char_lm": {"tune": {"seed": 2**32}}}, "char_lm.tune.seed: Input should be less than 4294967296"),
    ({"char_lm": {"tune": {"metric": "val_accuracy"}}}, "tune.metric 'val_accuracy' is not reported"),
    ({"char_lm": {"tune": {"workers_per_trial": 3}}}, "train.bs (32) must be a multiple of tune.workers_per_trial (3)"),
    ({"char_lm": {"tune": {"space": {"dropout": {"type": "uniform", "low": 0.0, "high": 1.5}}}}},
     "tune.space.dropout: 1.5 is not a valid train.dropout"),
    ({"char_lm": {"tune": {"space": {"bptt": {"type": "choice", "values": [32, 0]}}}}},
     "tune.space.bptt: 0 is not a valid train.bptt"),
    ({"char_lm": {"tune": {"space": {"epochs": {"type": "choice", "values": [1, 2]}}}}},
     "tune.space: ['epochs'] are set by tune itself"),
    ({"char_lm": {"register": {"metric": "test_loss"}}}, "register.metric/mode must be 'val_loss'/'min'"),
    ({"char_lm": {"evaluate": {"prompt": ""}}}, "char_lm.evaluate.prompt: String should have at least 1 character"),
    ({"char_lm": {"prepare": {"source": "file:///tmp/x.txt"}}}, "sha256 is required when source is a URL"),
    ({"char_lm": {"prepare": {"source": "/srv/corpus.txt"}}}, "is outside prepare.inputs ('inputs/char_lm')"),
    ({"image_classifier": {"prepare": {"source": "pets"}}}, "is outside prepare.inputs ('inputs/image_classifier')"),
])
def test_bad_values_give_one_line_naming_the_key(raw, expect):
    with pytest.raises(ParamsError) as err:
        parse_params(raw)
    msg = str(err.value)
    assert expect in msg
    assert "\n" not in msg


def test_register_section_is_spelled_register(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump({"char_lm": {"register": {"model_name": "x", "mode": "min"}}}))
    assert load_params(f).char_lm.register_.model_name == "x"


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ParamsError, match="file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("char_lm: [unclosed")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


def test_train_defaults_are_consistent():
    t = TrainParams()
    assert t.bs % t.num_workers == 0


def test_rnn_only_knobs_are_refused_for_other_archs():
    with pytest.raises(ParamsError, match="apply to arch 'rnn' only"):
        parse_params({"char_lm": {"train": {"arch": "lstm", "identity_init": True}}})
    p = parse_params({"char_lm": {"train": {"arch": "rnn", "nonlinearity": "relu", "identity_init": True}}})
    assert p.char_lm.train.nonlinearity == "relu"


def test_any_train_knob_can_join_the_search_space():
    p = parse_params({"char_lm": {"tune": {"space": {
        "n_hidden": {"type": "choice", "values": [128, 256]},
        "schedule": {"type": "choice", "values": ["cosine", "sgdr", "onecycle"]},
        "weight_decay": {"type": "loguniform", "low": 1e-4, "high": 1e-1}}}}})
    assert set(p.char_lm.tune.space) == {"n_hidden", "schedule", "weight_decay"}


def test_sampled_trial_configs_are_validated():
    from components.config import TuneParams
    from components.tuning.sweep import trial_train_config

    base = TrainParams().model_dump()
    cfg = trial_train_config(base, TuneParams(), {"lr": 0.01, "schedule": "onecycle"}, TrainParams, lambda c: 1000)
    assert cfg["schedule"] == "onecycle" and cfg["num_workers"] == 1 and cfg["epochs"] == TuneParams().epochs
    with pytest.raises(ValueError, match="apply to arch 'rnn' only"):
        trial_train_config(base, TuneParams(), {"identity_init": True}, TrainParams, lambda c: 1000)


def test_a_trial_epoch_scales_with_the_data_unless_set():
    """tune.steps_per_epoch null: pass_frac of a pass (for the sampled bptt), at least min_steps."""
    from components.config import TuneParams
    from components.tuning.sweep import trial_train_config
    from components.workloads import get

    w, base = get("char_lm"), TrainParams(bs=64).model_dump()
    data = {"n_train": 64 * 64_001}  # streams of 64,001 tokens: 1,000 windows of 64
    per_pass = lambda cfg: w.steps_per_pass(data, cfg)  # noqa: E731
    tp = TuneParams(pass_frac=0.05, min_steps=20)
    assert trial_train_config(base, tp, {"bptt": 64}, TrainParams, per_pass)["steps_per_epoch"] == 50
    assert trial_train_config(base, tp, {"bptt": 32}, TrainParams, per_pass)["steps_per_epoch"] == 100
    small = {"n_train": 64 * 641}  # a 10-window pass: the floor decides
    assert trial_train_config(base, tp, {}, TrainParams, lambda c: w.steps_per_pass(small, c))["steps_per_epoch"] == 20
    fixed = TuneParams(steps_per_epoch=7)
    assert trial_train_config(base, fixed, {}, TrainParams, per_pass)["steps_per_epoch"] == 7


def test_a_local_source_inside_inputs_is_accepted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = parse_params({"char_lm": {"prepare": {"source": "inputs/char_lm/corpus.txt"}},
                      "image_classifier": {"prepare": {"source": "/srv/pets", "inputs": "/srv"}}})
    assert p.char_lm.prepare.source == "inputs/char_lm/corpus.txt"


def test_train_says_which_hand_set_values_the_sweep_overrides():
    from components.training.report import describe_values

    hand = {"lr": 0.01, "bptt": 64, "dropout": 0.1}
    cfg = {"lr": 0.00404, "bptt": 64, "dropout": 0.1}
    line = describe_values(cfg, hand, {"lr": 0.00404, "bptt": 64}, ["bptt", "lr", "dropout"])
    assert line == ("bptt 64 (tuned; same as params.yaml), "
                    "lr 0.00404 (tuned; params.yaml's 0.01 unused while use_tuned is true), dropout 0.1")
    assert describe_values(hand, hand, {}, ["lr"]) == "lr 0.01"


@pytest.mark.parametrize("name", ["char-lm", "image.classifier_v2", "a/b c", "a:b", "x@champion", " lm", ""])
def test_model_names_we_accept_mlflow_accepts(name):
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_model_name

    try:
        parse_params({"char_lm": {"register": {"model_name": name}}})
        ours = True
    except ParamsError:
        ours = False
    try:
        _validate_model_name(name)
        theirs = True
    except MlflowException:
        theirs = False
    assert theirs or not ours  # never accept what MLflow would refuse after training
    assert ours == (name in ("char-lm", "image.classifier_v2"))


def test_train_line_shows_a_searched_string_knob():
    from components.training.report import describe_values

    hand, cfg = {"schedule": "cosine", "lr": 0.003}, {"schedule": "onecycle", "lr": 0.003}
    line = describe_values(cfg, hand, {"schedule": "onecycle"}, ["lr", "schedule"])
    assert line == "lr 0.003, schedule onecycle (tuned; params.yaml's cosine unused while use_tuned is true)"


def test_every_workload_builds_its_trial_configs_from_its_own_schema():
    """A trial config holds only keys the workload's train section has (the image classifier
    has no time_budget_s: a trial that set one was refused)."""
    from components.config import trial_params
    from components.tuning.sweep import trial_train_config
    from components.workloads import get, names

    for name in names():
        w = get(name)
        p = getattr(load_params(), name)
        cfg = trial_train_config(trial_params(p.train), p.tune, {}, w.train_schema, lambda c: 100)
        assert set(cfg) == set(w.train_schema.model_fields)
        assert cfg["epochs"] == p.tune.epochs and cfg["num_workers"] == p.tune.workers_per_trial


def test_relative_stores_resolve_against_the_project_root_dvc_names(tmp_path, monkeypatch):
    # `dvc exp run --temp` / queued experiments run in a temporary copy with DVC_ROOT naming the project
    from components.store import local_state_dir, store_root
    from components.tracking.server import artifact_root, tracking_uri

    project, temp = tmp_path / "project", tmp_path / "exp-workspace"
    project.mkdir()
    temp.mkdir()
    monkeypatch.chdir(temp)
    for var in ("MLFLOW_TRACKING_URI", "TRAINYARD_STORE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DVC_ROOT", str(project))
    assert tracking_uri() == f"sqlite:///{project}/mlflow.db"
    assert artifact_root(tracking_uri()) == (project / "mlartifacts").as_uri()
    assert store_root() == str(project / ".trainyard") and local_state_dir() == project / ".trainyard"
    monkeypatch.setenv("TRAINYARD_STORE", "runs")  # relative: the project's too
    assert store_root() == str(project / "runs")
    monkeypatch.delenv("DVC_ROOT")  # outside DVC: the working directory
    assert tracking_uri() == f"sqlite:///{temp}/mlflow.db"
