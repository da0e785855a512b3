import pytest
import yaml

from components.config import ParamsError, TrainParams, load_params, parse_params


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
])
def test_bad_values_give_one_line_naming_the_key(raw, expect):
    with pytest.raises(ParamsError) as err:
        parse_params(raw)
    msg = str(err.value)
    assert expect in msg
    assert "\n" not in msg


def test_register_section_is_spelled_register(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump({"char_lm": {"register": {"model_name": "x", "mode": "max"}}}))
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
    cfg = trial_train_config(base, TuneParams(), {"lr": 0.01, "schedule": "onecycle"})
    assert cfg["schedule"] == "onecycle" and cfg["num_workers"] == 1 and cfg["epochs"] == TuneParams().epochs
    with pytest.raises(ValueError, match="apply to arch 'rnn' only"):
        trial_train_config(base, TuneParams(), {"identity_init": True})
