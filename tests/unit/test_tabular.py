"""The tabular base (`components.workloads.tabular`): a table streamed into splits, each bad
input one line, its loop trains a model that beats the baseline, its pyfunc takes raw columns,
and a workload on it (the test tree's regression) fits in 100 lines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from components.config import ParamsError
from components.data.errors import SourceError
from components.workloads.tabular import TabularWorkload, load_model, tabular_params
from components.workloads.tabular.data import normalize, prepare, split_xy, stats
from tests.workloads.regression import WORKLOAD as REGRESSION
from tests.workloads.regression import write_rows

REPO = Path(__file__).resolve().parents[2]
PLUGIN = "regression=tests.workloads.regression:WORKLOAD"


class Classes(TabularWorkload):
    name = "classes_ut"
    params = tabular_params("Three classes.", model_name="classes-ut", source="inputs/t.csv", target="label",
                            task="classification", train={"epochs": 8, "lr": 0.02, "num_workers": 1})

    def model(self, n_features, n_outputs, train):
        return torch.nn.Sequential(torch.nn.Linear(n_features, 32), torch.nn.ReLU(), torch.nn.Linear(32, n_outputs))


CLASSES = Classes()


def _labels_csv(path: Path, n: int = 600) -> Path:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, 3))
    label = np.where(x[:, 0] + x[:, 1] < -0.5, "low", np.where(x[:, 0] - x[:, 2] > 0.5, "high", "mid"))
    path.write_text("a,b,c,label\n" + "".join(f"{r[0]:.4f},{r[1]:.4f},{r[2]:.4f},{lab}\n"
                                               for r, lab in zip(x.tolist(), label, strict=True)))
    return path


def _splits(folder: Path) -> dict[str, np.ndarray]:
    return {s: np.concatenate([y for _, y in split_xy(folder, s, 10_000)]) for s in ("train", "val", "test")}


def test_the_splits_do_not_depend_on_how_many_rows_are_read_at_once(tmp_path):
    src = write_rows(tmp_path / "rows.csv", n_rows=500)
    got = []
    for batch in (7, 100_000):
        prepare(str(src), "y", None, "regression", batch, str(tmp_path / f"p{batch}"))
        normalize(str(tmp_path / f"p{batch}"), str(tmp_path / f"n{batch}"), batch, 3, 0.2, 0.2, 1)
        got.append(_splits(tmp_path / f"n{batch}"))
    for s in ("train", "val", "test"):
        assert np.array_equal(got[0][s], got[1][s]), s
    n = {s: len(v) for s, v in got[0].items()}
    assert sum(n.values()) == 500 and 60 < n["val"] < 140 and 60 < n["test"] < 140, n
    st = stats(tmp_path / "n7")
    x = np.concatenate([x for x, _ in split_xy(tmp_path / "n7", "train", 1000)])
    assert np.allclose(x.mean(0), 0, atol=1e-4) and np.allclose(x.std(0), 1, atol=1e-3)  # train's own statistics
    assert st["features"] == [f"x{i}" for i in range(6)] and st["task"] == "regression"


def test_a_folder_of_parquet_parts_reads_as_one_table(tmp_path):
    t = pa.table({"f": np.arange(40, dtype=np.float64), "g": np.ones(40), "y": np.arange(40) * 2.0})
    (tmp_path / "table").mkdir()
    pq.write_table(t.slice(0, 25), tmp_path / "table/a.parquet")
    pq.write_table(t.slice(25), tmp_path / "table/b.parquet")
    line = prepare(str(tmp_path / "table"), "y", ["f"], "regression", 8, str(tmp_path / "p"))
    assert line.startswith("40 rows x 1 features")


@pytest.mark.parametrize("text, target, features, task, expected", [
    ("a,b\n1,2\n", "y", None, "regression", "no target column 'y' (columns: a, b)"),
    ("a,y\n1,2\n", "y", ["z"], "regression", "no feature column 'z'"),
    ("a,y\nx,2\n", "y", None, "regression", "row 1: column 'a' holds invalid value 'x', not a number"),
    ("a,y\n1,2\n3,\n", "y", None, "regression", "row 2: no value in column 'y'"),
    ("a,y\n1,cat\n", "y", None, "regression", "class labels? make the workload's task classification"),
    ("a,label\n1,cat\n2,cat\n", "label", None, "classification", "every row is 'cat'"),
    ("a,y\n", "y", None, "regression", "no rows"),
])
def test_each_bad_table_is_one_line_and_nothing_is_published(tmp_path, text, target, features, task, expected):
    (tmp_path / "t.csv").write_text(text)
    with pytest.raises(SourceError, match=expected.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        prepare(str(tmp_path / "t.csv"), target, features, task, 100, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_an_empty_split_is_named(tmp_path):
    write_rows(tmp_path / "rows.csv", n_rows=3)
    prepare(str(tmp_path / "rows.csv"), "y", None, "regression", 100, str(tmp_path / "p"))
    with pytest.raises(SourceError, match="split is empty"):
        normalize(str(tmp_path / "p"), str(tmp_path / "n"), 100, 0, 0.1, 0.1, 1)


def test_a_model_of_the_wrong_shape_is_one_line_before_any_compute():
    class Wrong(TabularWorkload):
        name = "wrong"
        params = REGRESSION.params

        def model(self, n_features, n_outputs, train):
            return torch.nn.Linear(n_features, n_outputs + 1)

    with pytest.raises(ParamsError, match=r"wrong: Wrong.model maps \(2, 6\) rows to \(2, 2\), not \(2, 1\)"):
        Wrong().check_model(6, 1, {})


def _fit(workload: TabularWorkload, source: Path, work: Path, monkeypatch) -> dict:
    from pipelines.inline import fit_and_score

    monkeypatch.setenv("TRAINYARD_WORKLOADS", f"{PLUGIN},classes_ut=tests.unit.test_tabular:CLASSES")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    p = workload.params()
    p = p.model_copy(update={"prepare": p.prepare.model_copy(update={"source": str(source), "inputs": str(source.parent)}),
                             "train": p.train.model_copy(update={"num_workers": 1})})
    return fit_and_score(workload.name, p, work)


def test_regression_trains_in_process_beats_the_mean_and_serves_raw_columns(tmp_path, monkeypatch):
    import pandas as pd

    from components.workloads.tabular.pyfunc import TabularPyfunc

    m = _fit(REGRESSION, write_rows(tmp_path / "in/rows.csv"), tmp_path / "work", monkeypatch)
    assert m["val_loss"] < 0.05 * m["baseline_mean_val_loss"], m
    assert (tmp_path / "work/reports/predictions.png").stat().st_size > 0
    rows = pd.read_csv(tmp_path / "in/rows.csv")
    model = TabularPyfunc()
    model.model, model.blob = load_model(tmp_path / "work/model.pt")
    pred = model.predict(None, rows.drop(columns="y").iloc[:, ::-1])  # columns by name, in any order
    assert float(np.mean((pred["prediction"] - rows["y"]) ** 2)) < 0.05 * float(rows["y"].var())


def test_classification_beats_the_majority_class(tmp_path, monkeypatch):
    m = _fit(CLASSES, _labels_csv(tmp_path / "in.csv"), tmp_path / "work", monkeypatch)
    assert m["accuracy"] > m["baseline_majority_val_accuracy"] + 0.2, m
    assert (tmp_path / "work/reports/predictions.csv").read_text().startswith("actual,predicted\n")


def test_the_pyfunc_ships_only_the_workloads_own_package_files(tmp_path):
    from components.workloads.tabular.pyfunc import package_tree

    (shipped,) = package_tree("tests.workloads.regression", REPO, tmp_path)
    files = sorted(p.relative_to(tmp_path).as_posix() for p in Path(shipped).rglob("*.py"))
    assert files == ["tests/__init__.py", "tests/workloads/__init__.py", "tests/workloads/regression/__init__.py"]
    assert package_tree("components.workloads.char_lm", REPO, tmp_path / "x") == ()


def test_a_workload_on_the_base_is_at_most_100_lines():
    lines = sum(len(p.read_text().splitlines()) for p in (REPO / "tests/workloads/regression").rglob("*.py"))
    assert lines <= 100, lines


def test_other_defaults_keep_each_keys_meaning_and_checks():
    p = REGRESSION.params()
    assert p.prepare.source == "inputs/regression/rows.csv" and p.prepare.inputs == "inputs/regression"
    assert p.train.epochs == 3 and p.register_.model_name == "regression-test"
    train = type(p.train)
    assert train.model_fields["epochs"].description == "passes over the train rows"
    with pytest.raises(ValueError, match="greater than 0"):
        train(epochs=0)
    assert type(CLASSES.params()).REGISTER_METRIC == ("accuracy", "max") and CLASSES.select == ("val_accuracy", "max")
