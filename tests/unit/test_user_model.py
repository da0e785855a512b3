"""A model by import path (`components/workloads/modules.py`): the user's module, torchvision's
zoo, and one clear line for each way it can be wrong, before any compute."""

from __future__ import annotations

import textwrap

import pytest
import torch

from components.config import ParamsError
from components.workloads import modules
from components.workloads.image_classifier.model import build, load_model, publish_model

KEY = "image_classifier.train.arch"


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder with `nets_ut/tiny.py` (importing a helper module of its own) as cwd."""
    pkg = tmp_path / "nets_ut"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "layers.py").write_text("from torch import nn\n\ndef head(n_in, n_out):\n    return nn.Linear(n_in, n_out)\n")
    (pkg / "tiny.py").write_text(textwrap.dedent("""
        import math
        from torch import nn
        from nets_ut.layers import head

        def build(in_shape, n_classes, dropout=0.0):
            return nn.Sequential(nn.Flatten(), nn.Dropout(dropout), head(math.prod(in_shape), n_classes))

        def raises(in_shape, n_classes):
            raise RuntimeError("no GPU here")

        def wrong(in_shape, n_classes):
            return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(in_shape), n_classes + 1))

        def not_a_module(in_shape, n_classes):
            return 3
    """))
    (pkg / "heads.py").write_text(textwrap.dedent("""
        from torch import nn

        def small(in_features, n_classes, dropout=0.0):
            return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, n_classes))

        def wrong(in_features, n_classes):
            return nn.Linear(in_features, 1)
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    import sys

    for name in [m for m in sys.modules if m.startswith("nets_ut")]:
        del sys.modules[name]


def test_a_project_module_by_import_path_is_built_with_dropout_and_round_trips(project):
    net = build("nets_ut.tiny:build", (1, 8, 8), 10, dropout=0.25)
    assert net(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    assert net[1].p == 0.25  # dropout= passed because the factory takes it
    modules.check("nets_ut.tiny:build", KEY, (1, 8, 8), 10)

    path = project / "model.pt"
    data = {"shape": [1, 8, 8], "n_classes": 10, "classes": [str(i) for i in range(10)], "mean": [0.0], "std": [1.0]}
    publish_model(path, {"model": net.state_dict()}, data, "nets_ut.tiny:build", 0.25)
    again, blob = load_model(path)
    assert blob["config"]["arch"] == "nets_ut.tiny:build"
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(again(x), net.eval()(x))

    # what the registered model ships, and what dvc.yaml lists for the stages that build it
    from components.workloads.modules import module_code

    assert module_code("nets_ut.tiny:build") == (str(project / "nets_ut"),)
    assert module_code("torchvision:resnet18") == () and module_code("resnet") == ()
    (project / "params.yaml").write_text("image_classifier:\n  train:\n    arch: nets_ut.tiny:build\n")
    assert modules.model_files("image_classifier", project) == ["nets_ut/__init__.py", "nets_ut/layers.py",
                                                                "nets_ut/tiny.py"]
    (project / "params.yaml").write_text("image_classifier:\n  train:\n    arch: torchvision:resnet18\n")
    assert modules.model_files("image_classifier", project) == []


def test_torchvision_names_build_with_random_weights_for_grey_images():
    modules.check("torchvision:resnet18", KEY, (1, 8, 8), 10)
    net = build("torchvision:resnet18", (1, 8, 8), 10)
    assert net(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize(("spec", "says"), [
    ("nets_ut.missing:build", "cannot import 'nets_ut.missing' (ModuleNotFoundError"),
    ("nets_ut.tiny:nope", "'nets_ut.tiny' has no callable 'nope'"),
    ("nets_ut.tiny:raises", "nets_ut.tiny:raises(in_shape=(1, 8, 8), n_classes=10) raised RuntimeError: no GPU here"),
    ("nets_ut.tiny:wrong", "maps (2, 1, 8, 8) images to (2, 11), not (2, 10) logits"),
    ("nets_ut.tiny:not_a_module", "returned a int, not a torch.nn.Module"),
    ("torchvision:resnet5000", "torchvision has no classification model 'resnet5000'"),
    ("nets ut:build", "is not a name of ours nor `package.module:factory`"),
])
def test_each_wrong_model_is_one_line_naming_the_key(project, spec, says):
    with pytest.raises(ParamsError) as err:
        modules.check(spec, KEY, (1, 8, 8), 10)
    assert str(err.value).startswith(f"{KEY}: ") and says in str(err.value), str(err.value)


def test_params_take_our_names_and_import_paths_only():
    from pydantic import ValidationError

    from components.workloads.image_classifier.params import ImageTrainParams

    assert ImageTrainParams(arch="nets.tiny:build").arch == "nets.tiny:build"
    assert ImageTrainParams(arch="torchvision:efficientnet_b0").arch == "torchvision:efficientnet_b0"
    with pytest.raises(ValidationError, match="nor a model by import path"):
        ImageTrainParams(arch="resnet19")


def test_a_text_classifier_head_by_import_path_is_checked_built_and_round_trips(project):
    from pydantic import ValidationError

    from components.workloads.text_classifier.model import build_from, publish_model
    from components.workloads.text_classifier.params import TextTrainParams

    head_key = "text_classifier.train.head"
    modules.check_head("nets_ut.heads:small", head_key, 48, 3, 0.1)
    with pytest.raises(ParamsError, match=r"maps \(2, 48\) features to \(2, 1\), not \(2, 3\) logits"):
        modules.check_head("nets_ut.heads:wrong", head_key, 48, 3)
    with pytest.raises(ParamsError, match="a head is package.module:factory"):
        modules.check_head("torchvision:resnet18", head_key, 48, 3)
    assert TextTrainParams(head="nets_ut.heads:small").head == "nets_ut.heads:small"
    with pytest.raises(ValidationError, match="neither concat_pool nor a head by import path"):
        TextTrainParams(head="torchvision:resnet18")

    enc = {"vocab_size": 7, "arch": "gru", "n_fac": 4, "n_hidden": 16, "n_layers": 1, "vocab": list("abcdefg")}
    blob = {"encoder": enc, "classes": ["x", "y", "z"], "head": {"dropout": 0.1, "head_hidden": 5,
                                                                 "spec": "nets_ut.heads:small"}}
    net = build_from(blob)
    assert net(torch.zeros(12, 2, dtype=torch.long)).shape == (2, 3)  # (seq_len, bs) ids in, logits out
    assert net.head[1].in_features == 48  # the last, max and mean pooled states
    train = {"dropout": 0.1, "head_hidden": 5, "head": "nets_ut.heads:small", "encoder": "scratch"}
    publish_model(project / "text.pt", {"model": net.state_dict()}, {"encoder": enc, "classes": blob["classes"]}, train)
    from components.workloads.text_classifier.model import load_model as load_text

    again, saved = load_text(project / "text.pt")
    assert saved["head"]["spec"] == "nets_ut.heads:small"
    (project / "params.yaml").write_text("text_classifier:\n  train:\n    head: nets_ut.heads:small\n")
    assert modules.model_files("text_classifier", project) == ["nets_ut/__init__.py", "nets_ut/heads.py"]


def test_a_weights_file_by_path_loads_what_fits_and_is_a_dep(project):
    import torchvision

    from components.workloads.image_classifier.params import ImageTrainParams

    # torchvision's resnet18 as saved from ImageNet (1000 classes), into a 10-class model for grey images
    torch.save(torchvision.models.resnet18(num_classes=1000).state_dict(), project / "r18.pth")
    net = build("torchvision:resnet18", (1, 8, 8), 10)
    loaded, left = modules.load_weights(net, project / "r18.pth", "image_classifier.train.weights")
    assert left == ["net.fc.bias", "net.fc.weight"] and "net.conv1.weight" in loaded  # all but the classifier
    saved = torch.load(project / "r18.pth")
    assert torch.equal(net.state_dict()["net.layer1.0.conv1.weight"], saved["layer1.0.conv1.weight"])

    torch.save({"x": torch.zeros(3)}, project / "other.pth")
    with pytest.raises(ParamsError, match="image_classifier.train.weights: none of the tensors in"):
        modules.load_weights(net, project / "other.pth", "image_classifier.train.weights")
    with pytest.raises(ParamsError, match="image_classifier.train.weights: cannot read 'missing.pth'"):
        modules.load_weights(net, "missing.pth", "image_classifier.train.weights")

    assert ImageTrainParams(weights="r18.pth").weights == "r18.pth"
    (project / "params.yaml").write_text("image_classifier:\n  train:\n    arch: torchvision:resnet18\n"
                                         "    weights: r18.pth\n")
    assert modules.model_files("image_classifier", project) == ["r18.pth"]  # a dep of the stages that build it


def test_a_stage_refuses_a_model_or_weights_file_dvc_yaml_does_not_list(project, monkeypatch):
    import shutil
    from pathlib import Path

    import yaml

    from components.run_keys import require_model_declared

    repo = Path(__file__).resolve().parents[2]
    shutil.copy(repo / "dvc.yaml", project / "dvc.yaml")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["image_classifier"]["train"]["weights"] = "w.pth"
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("DVC_STAGE", "train@image_classifier")
    with pytest.raises(ParamsError, match=r"image_classifier.train.weights: dvc.yaml does not list w.pth among "
                                          r"train@image_classifier's deps"):
        require_model_declared("image_classifier", "params.yaml", project)
    params["image_classifier"]["train"] |= {"weights": None, "arch": "nets_ut.tiny:build"}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError, match=r"image_classifier.train.arch: dvc.yaml does not list nets_ut/__init__.py"):
        require_model_declared("image_classifier", "params.yaml", project)
