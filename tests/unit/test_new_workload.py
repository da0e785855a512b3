"""`python -m components.cli.new_workload`: what it writes, and what it refuses before writing
anything. (Its package training and registering through DVC, Ray and MLflow:
tests/integration/test_workload_plugin.py.)"""

from __future__ import annotations

import tomllib

import pytest

from components.cli.new_workload import create, register_in_pyproject
from components.workloads import project_workloads


@pytest.fixture
def root(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "mine"\n')
    return tmp_path


def test_it_writes_a_package_its_model_a_sample_table_a_test_and_its_table_line(root):
    written = {p.relative_to(root).as_posix() for p in create("houses", root=root)}
    assert written == {"workloads/__init__.py", "workloads/houses/__init__.py", "workloads/houses/model.py",
                       "inputs/houses/rows.csv", "tests/test_workload_houses.py", "pyproject.toml"}
    for f in ("workloads/houses/__init__.py", "workloads/houses/model.py", "tests/test_workload_houses.py"):
        compile((root / f).read_text(), f, "exec")  # valid Python
    assert project_workloads(root) == {"houses": "workloads.houses:WORKLOAD"}
    assert tomllib.loads((root / "pyproject.toml").read_text())["project"]["name"] == "mine"  # the rest kept
    rows = (root / "inputs/houses/rows.csv").read_text().splitlines()
    assert rows[0] == "x0,x1,x2,x3,y" and len(rows) == 801

    create("churn", "ml/tabular", "classification", root=root)
    assert project_workloads(root) == {"houses": "workloads.houses:WORKLOAD", "churn": "ml.tabular.churn:WORKLOAD"}
    assert (root / "ml/__init__.py").exists() and (root / "ml/tabular/__init__.py").exists()
    assert 'task="classification"' in (root / "ml/tabular/churn/__init__.py").read_text()
    assert (root / "inputs/churn/rows.csv").read_text().startswith("x0,x1,x2,x3,label\n")


@pytest.mark.parametrize(("name", "where", "says"), [
    ("char_lm", "workloads", "workload name 'char_lm' is taken (components.workloads.char_lm:WORKLOAD)"),
    ("Houses", "workloads", "lower-case letters"),
    ("my-model", "workloads", "lower-case letters"),
    ("class", "workloads", "lower-case letters"),
    ("houses", "1st", "--in '1st': a folder of the project whose path parts are Python names"),
    ("houses", "taken", "taken/houses exists already"),
])
def test_it_refuses_with_one_line_and_writes_nothing(root, name, where, says):
    (root / "taken/houses").mkdir(parents=True)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    with pytest.raises(ValueError) as err:
        create(name, where, root=root)
    assert says in str(err.value), str(err.value)
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_the_table_line_goes_into_an_existing_section():
    text = '[tool.trainyard.workloads]\nold = "a.b:WORKLOAD"\n\n[tool.ruff]\nline-length = 120\n'
    out = tomllib.loads(register_in_pyproject(text, "new", "c.d:WORKLOAD"))
    assert out["tool"]["trainyard"]["workloads"] == {"new": "c.d:WORKLOAD", "old": "a.b:WORKLOAD"}
    assert out["tool"]["ruff"] == {"line-length": 120}


def test_a_bad_table_line_is_named(root):
    (root / "pyproject.toml").write_text('[tool.trainyard.workloads]\nhouses = "not a path"\n')
    with pytest.raises(ValueError, match=r"pyproject.toml \[tool.trainyard.workloads\]: houses = 'not a path'"):
        project_workloads(root)
