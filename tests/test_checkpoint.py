"""Checkpoints load with weights_only=True, rebuild the same model, and fail clearly."""

import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import TINY

from asd.infra.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from asd.infra.config import load_config
from asd.method.model import build_model


@pytest.fixture(scope="module")
def cfg(repo):
    """The tiny model on small inputs: 64 frames of 32 mel bands."""
    return load_config(
        repo / "config.yml",
        [*TINY, "features.frames=64", "features.n_mels=32", "model.time_pool=2"],
    )


@pytest.fixture
def classes():
    return pd.DataFrame(
        {
            "class": [0, 1, 2],
            "machine": ["fan", "fan", "pump"],
            "section": ["00", "00", "01"],
            "domain": ["source", "target", "source"],
        }
    )


@pytest.fixture
def trained(cfg, classes):
    torch.manual_seed(0)
    model, head = build_model(cfg, len(classes))
    model.train(), head.train()
    x = torch.randn(4, 1, 64, 32)
    head(model(x), torch.eye(3)[[0, 1, 2, 0]])  # moves BN statistics and the scale s
    return model, head


def save(path, cfg, classes, model, head, **kw):
    return save_checkpoint(
        path,
        model=model,
        head=head,
        cfg=cfg,
        classes=classes,
        mean=np.arange(32, dtype=np.float32),
        std=np.ones(32, np.float32),
        progress={"epoch": 3, "iteration": 120},
        **kw,
    )


def test_round_trip_rebuilds_the_same_outputs(tmp_path, cfg, classes, trained):
    model, head = trained
    opt = torch.optim.Adam([*model.parameters(), *head.parameters()])
    gen = torch.Generator().manual_seed(7)
    path = save(
        tmp_path / "run" / "model.pth",
        cfg,
        classes,
        model,
        head,
        extra={"optimizer": opt.state_dict(), "rng": gen.get_state(), "seed": 2021},
    )
    assert [p.name for p in path.parent.iterdir()] == ["model.pth"]  # no temporary left over

    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "asd-checkpoint-v1"
    assert raw["progress"] == {"epoch": 3, "iteration": 120}
    assert raw["seed"] == 2021 and torch.equal(raw["rng"], gen.get_state())
    assert raw["config"] == cfg.to_dict()
    assert torch.equal(raw["head"]["s"], head.s)

    loaded = load_model(path)
    assert not loaded.model.training and not loaded.head.training
    assert loaded.cfg == cfg and loaded.progress["epoch"] == 3
    pd.testing.assert_frame_equal(loaded.classes, classes, check_dtype=False)
    assert loaded.classes["section"].tolist() == ["00", "00", "01"]
    assert loaded.mean.dtype == np.float32 and np.array_equal(loaded.mean, np.arange(32))
    assert torch.equal(loaded.head.s, head.s)
    model.eval(), head.eval()
    x = torch.randn(3, 1, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model(x), rtol=0, atol=0)
        torch.testing.assert_close(loaded.head(model(x)), head(model(x)), rtol=0, atol=0)
    opt2 = torch.optim.Adam([*loaded.model.parameters(), *loaded.head.parameters()])
    opt2.load_state_dict(load_checkpoint(path)["optimizer"])


def test_state_dicts_are_accepted(tmp_path, cfg, classes, trained):
    model, head = trained
    save(tmp_path / "a.pth", cfg, classes, model.state_dict(), head.state_dict())
    assert set(load_checkpoint(tmp_path / "a.pth")["model"]) == set(model.state_dict())


def test_truncated_file_names_the_file(tmp_path, cfg, classes, trained):
    path = save(tmp_path / "model.pth", cfg, classes, *trained)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.pth") as err:
        load_model(path)
    assert "cannot be read" in str(err.value)


def test_missing_foreign_and_incomplete_files(tmp_path):
    with pytest.raises(CheckpointError, match="nothere.pth.*does not exist"):
        load_checkpoint(tmp_path / "nothere.pth")
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(CheckpointError, match="text.pth"):
        load_checkpoint(tmp_path / "text.pth")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pth")
    with pytest.raises(CheckpointError, match="foreign.pth is not an asd-checkpoint-v1"):
        load_checkpoint(tmp_path / "foreign.pth")
    torch.save({"format": "asd-checkpoint-v1", "config": {}}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="partial.pth lacks .*classes"):
        load_checkpoint(tmp_path / "partial.pth")
    with open(tmp_path / "pickled.pth", "wb") as f:  # arbitrary objects are refused unread
        pickle.dump({"format": "asd-checkpoint-v1", "x": pd.DataFrame({"a": [1]})}, f, protocol=2)
    with pytest.raises(CheckpointError, match="pickled.pth"):
        load_checkpoint(tmp_path / "pickled.pth")


def test_weights_that_do_not_fit_the_config(tmp_path, cfg, classes, trained):
    path = save(tmp_path / "model.pth", cfg, classes, *trained)
    data = torch.load(path, weights_only=True)
    data["config"]["model"]["stage_channels"] = [4, 4, 8, 16]
    torch.save(data, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="other.pth: 'model' weights do not fit"):
        load_model(tmp_path / "other.pth")
    data["config"]["model"]["nonsense"] = 1
    torch.save(data, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="bad.pth: stored config"):
        load_model(tmp_path / "bad.pth")


def test_unsafe_contents_are_refused_and_nothing_written(tmp_path, cfg, classes, trained):
    with pytest.raises(TypeError, match="ndarray"):
        save(tmp_path / "x.pth", cfg, classes, *trained, extra={"bad": np.zeros(3)})
    assert list(tmp_path.iterdir()) == []


def test_trim_log_keeps_complete_rows_up_to_the_epoch(tmp_path):
    from asd.infra.runs import trim_log

    log = tmp_path / "train.csv"
    log.write_text("step,loss\n1,0.5\n2,0.4\n3,0.3\n4,0.")  # the last row cut mid-write
    trim_log(log, 2)
    assert log.read_text() == "step,loss\n1,0.5\n2,0.4\n"
    trim_log(log, 0)
    assert log.read_text() == "step,loss\n"
