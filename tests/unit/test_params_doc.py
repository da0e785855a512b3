"""One source for every default and its meaning: params.yaml and the README's knob tables are
what the schema says, key for key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from components.cli.params_doc import readme_with_tables, render_knob_tables, render_params_yaml
from components.params import load_params, params_schema

REPO = Path(__file__).resolve().parents[2]


def test_params_yaml_is_the_schema_with_its_defaults_and_meanings():
    assert (REPO / "params.yaml").read_text() == render_params_yaml(), \
        "params.yaml differs from the schema: run python -m components.cli.params_doc"
    # and the values it holds are the defaults a left-out key gets
    assert load_params(REPO / "params.yaml").model_dump() == params_schema()().model_dump()


def test_readme_knob_tables_are_the_schema():
    readme = (REPO / "docs/knobs.md").read_text()
    assert readme_with_tables(readme) == readme, \
        "docs/knobs.md's knob tables differ from the schema: run python -m components.cli.params_doc"


def test_every_key_of_every_section_is_documented_in_both():
    tables, text = render_knob_tables(), render_params_yaml()
    raw = yaml.safe_load(text)
    for name, section in raw.items():
        for stage, keys in section.items():
            for key in keys:
                assert f"| `{stage}.{key}` |" in tables, f"{name}.{stage}.{key} missing from the README tables"
                field = getattr(params_schema()(), name)
                cls = type(getattr(field, "register_" if stage == "register" else stage))
                assert cls.model_fields[key].description, f"{name}.{stage}.{key} has no description"


def test_a_changed_default_shows_as_a_difference(monkeypatch):
    from components.workloads.char_lm.params import TrainParams

    before = render_params_yaml()
    field = TrainParams.model_fields["epochs"]
    monkeypatch.setattr(field, "default", 4)
    TrainParams.model_rebuild(force=True)
    try:
        assert render_params_yaml() != before
    finally:
        monkeypatch.undo()
        TrainParams.model_rebuild(force=True)


@pytest.mark.parametrize("key", ["time_budget_s", "bptt"])
def test_a_key_the_image_classifier_does_not_use_is_refused(key):
    from components.config import ParamsError
    from components.params import parse_params

    with pytest.raises(ParamsError, match=f"image_classifier.train.{key}: unknown key"):
        parse_params({"image_classifier": {"train": {key: 10}}})


def test_the_stages_page_names_every_final_run_key():
    """docs/stages.md lists the keys a sweep trial leaves out: the list follows the code."""
    from components.config import FINAL_ONLY

    row = next(line for line in (REPO / "docs/stages.md").read_text().splitlines()
               if line.startswith("| `trial_params@char_lm`"))
    missing = [k for k in FINAL_ONLY if f"`{k}`" not in row]
    assert not missing, f"docs/stages.md's trial_params row leaves out {missing}"


def test_the_readme_own_data_example_is_valid_params(tmp_path):
    """The README's "Your own data" snippet, merged into params.yaml, passes the schema as typed."""
    import re

    import yaml

    from components.params import load_params

    text = (REPO / "README.md").read_text()
    block = re.compile(r"^```yaml\n(.*?)^```", re.S | re.M).search(text, text.index("## Your own data")).group(1)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for w, sections in yaml.safe_load(block).items():
        for section, values in sections.items():
            params[w][section].update(values)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    p = load_params(tmp_path / "params.yaml")
    assert p.image_classifier.prepare.image_size == 128 and p.text_classifier.prepare.text_column == "body"
