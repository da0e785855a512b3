"""State in the run store that does not load (cut short, a bad block, an interrupted copy) is
found on read; the stage falls back to the last state that loads, or starts over, and says so
in one line."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from components.store import DamagedState, read_store_json, write_store_json
from components.training.checkpoints import DIGEST_FILE, STATE_FILE, load_state, save_state
from components.training.driver import SNAPSHOT, fit_in_process, mend_run_folder
from components.training.session import INDEX_FILE
from components.tuning.search import damaged_round
from components.workloads.char_lm.loop import train_loop_per_worker
from tests.unit.test_session import Crash, _cfg, _crash_after


def damage(path: Path, how: str) -> None:
    """Damage a file as a full disk, a bad block or an interrupted copy would."""
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "zero-byte":
        path.write_bytes(b"")
    elif how == "byte-flipped":  # in the tensor data: torch itself would load it without a word
        i = len(data) * 3 // 4
        path.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:])
    elif how == "missing":
        path.unlink()
    else:
        raise ValueError(how)


@pytest.mark.parametrize("how", ["truncated", "zero-byte", "byte-flipped", "missing"])
def test_a_checkpoint_that_does_not_load_is_named_on_read(tmp_path, how):
    state = {"model": {"w": torch.arange(4096.0)}, "epoch": 3}
    save_state(tmp_path, state)
    assert load_state(tmp_path)["epoch"] == 3
    damage(tmp_path / STATE_FILE, how)
    with pytest.raises(DamagedState, match=r"checkpoint epoch-0003: state\.pt|checkpoint epoch-0003 has no"):
        load_state(tmp_path, "epoch-0003")


def test_a_checkpoint_written_before_digests_still_loads(tmp_path):
    save_state(tmp_path, {"model": {}, "epoch": 1})
    (tmp_path / DIGEST_FILE).unlink()
    assert load_state(tmp_path)["epoch"] == 1


def _run(uri: str, tokens: dict, select, on_report=None):
    return fit_in_process(train_loop_per_worker, {"train": _cfg(4), "data": tokens}, run_uri=uri,
                          cpus_per_worker=1, use_gpu=False, select=select, on_report=on_report)


def _same_run(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if not k.endswith(("_s", "per_s"))} for h in history]


def test_a_damaged_last_checkpoint_falls_back_to_the_one_before_and_trains_what_an_undisturbed_run_does(
        tiny_tokens, tmp_path, capsys):
    # best by the highest val loss: an early epoch stays kept beside the latest, to fall back to
    select = ("val_loss", "max")
    undisturbed = _run(str(tmp_path / "a"), tiny_tokens, select)
    uri = str(tmp_path / "b")
    with pytest.raises(Crash):
        _run(uri, tiny_tokens, select, _crash_after(3, []))
    kept = [e["dir"] for e in read_store_json(f"{uri}/{INDEX_FILE}")]
    assert kept[-1] == "epoch-0003" and len(kept) == 2, kept
    damage(Path(uri) / "epoch-0003" / STATE_FILE, "truncated")
    capsys.readouterr()
    seen: list = []
    out = _run(uri, tiny_tokens, select, seen.append)
    said = capsys.readouterr().out
    assert "checkpoint epoch-0003: state.pt" in said and f"going on from checkpoint {kept[0]} instead" in said, said
    first = int(kept[0].split("-")[1])
    assert [m["epoch"] for m in seen] == list(range(first + 1, 5))
    assert _same_run(out.state["history"]) == _same_run(undisturbed.state["history"])
    assert out.best["epoch"] == undisturbed.best["epoch"]


def test_nothing_that_loads_starts_the_run_over_and_says_so(tiny_tokens, tmp_path, capsys):
    uri = str(tmp_path / "run")
    with pytest.raises(Crash):
        _run(uri, tiny_tokens, None, _crash_after(2, []))
    for folder in Path(uri).glob("epoch-*"):
        damage(folder / STATE_FILE, "byte-flipped")
    seen: list = []
    out = _run(uri, tiny_tokens, None, seen.append)
    said = capsys.readouterr().out
    assert "does not match its recorded sha256; starting the run over" in said, said
    assert [m["epoch"] for m in seen] == [1, 2, 3, 4] and out.state["resumes"] == []


def test_a_damaged_checkpoint_index_is_listed_again_from_the_folders(tiny_tokens, tmp_path, capsys):
    uri = str(tmp_path / "run")
    with pytest.raises(Crash):
        _run(uri, tiny_tokens, ("val_loss", "min"), _crash_after(2, []))
    damage(Path(uri) / INDEX_FILE, "truncated")
    seen: list = []
    out = _run(uri, tiny_tokens, ("val_loss", "min"), seen.append)
    said = capsys.readouterr().out
    assert f"{INDEX_FILE} does not load" in said and "listed again from the" in said, said
    assert [m["epoch"] for m in seen] == [3, 4]  # resumed from epoch 2, not from scratch
    assert out.state["resumes"] == [{"epoch": 2, "step": 8}]


def _snapshot(run: Path, names: list[str]) -> dict:
    """A Ray Train checkpoint list as Ray 2.x writes it (score order; indices in report order)."""
    results = [{"version": 0, "checkpoint_dir_name": n, "metrics": {"epoch": i + 1}} for i, n in enumerate(names)]
    snap = {"ray_version": "2", "checkpoint_results": results, "checkpoint_report_indices": list(range(len(names))),
            "latest_checkpoint_result": results[-1], "pending_training_results": [], "pending_validation_specs": [],
            "current_report_index": len(names), "validated_checkpoint_dir_names": [],
            "timed_out_validation_checkpoint_dir_names": [], "failed_validation_checkpoint_dir_names": []}
    for n in names:
        (run / n).mkdir(parents=True)
    write_store_json(str(run / SNAPSHOT), snap)
    return snap


def test_a_train_run_list_naming_a_folder_that_is_gone_drops_it_and_goes_on_from_the_last_that_is_there(tmp_path):
    run = tmp_path / "run-k"
    _snapshot(run, ["epoch-0001", "epoch-0002"])
    assert mend_run_folder(str(tmp_path), "run-k") is None  # whole: untouched
    shutil.rmtree(run / "epoch-0002")  # an interrupted copy of the run store
    said = mend_run_folder(str(tmp_path), "run-k")
    assert said and "epoch-0002" in said and "goes on from epoch-0001" in said
    snap = read_store_json(str(run / SNAPSHOT))
    assert [r["checkpoint_dir_name"] for r in snap["checkpoint_results"]] == ["epoch-0001"]
    assert snap["checkpoint_report_indices"] == [0]
    assert snap["latest_checkpoint_result"]["checkpoint_dir_name"] == "epoch-0001"


def test_a_train_run_list_that_does_not_parse_is_set_aside_and_the_run_starts_over(tmp_path):
    run = tmp_path / "run-k"
    _snapshot(run, ["epoch-0001"])
    damage(run / SNAPSHOT, "truncated")
    said = mend_run_folder(str(tmp_path), "run-k")
    assert said and f"{SNAPSHOT} does not load" in said and "the run starts over" in said
    assert not (run / SNAPSHOT).exists() and len(list(run.glob(f"{SNAPSHOT}.damaged-*"))) == 1


def test_a_sweep_round_whose_state_is_cut_short_is_found_without_running_any_of_it(tmp_path, capsys):
    good = {"trial_data": [], "runner_data": {}}
    (tmp_path / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps(good))
    (tmp_path / "experiment_state-2026-01-02_00-00-00.json").write_text(json.dumps(good))
    (tmp_path / "tuner.pkl").write_bytes(pickle.dumps({"a": list(range(100))}))
    (tmp_path / "search_gen_state-2026-01-01_00-00-00.json").write_bytes(pickle.dumps([1, 2]))  # Tune's, so named
    assert damaged_round(str(tmp_path)) is None
    # the newest experiment state cut short: set aside, Tune resumes from the one before
    damage(tmp_path / "experiment_state-2026-01-02_00-00-00.json", "truncated")
    assert damaged_round(str(tmp_path)) is None
    assert "resumes from its previous state file" in capsys.readouterr().out
    assert [p.name for p in tmp_path.glob("experiment_state-*.json")] == ["experiment_state-2026-01-01_00-00-00.json"]
    # the tuner's own pickle cut short: the round cannot be restored
    damage(tmp_path / "tuner.pkl", "truncated")
    assert "tuner.pkl does not load" in damaged_round(str(tmp_path))
