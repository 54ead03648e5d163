"""The report's numbers are the defaults of config.yml; loading is strict."""

import math

import pytest

from asd.infra.config import ConfigError, load_config


@pytest.fixture(scope="module")
def cfg(repo):
    return load_config(repo / "config.yml")


def test_report_features(cfg):
    f = cfg.features
    assert (f.sample_rate, f.n_fft, f.hop_length, f.n_mels) == (16000, 1024, 512, 128)
    assert (f.fmin, f.fmax, f.frames) == (0.0, 8000.0, 313)


def test_report_model(cfg):
    m = cfg.model
    assert (m.stem_channels, m.stem_kernel, m.stem_stride) == (16, 7, 2)
    assert m.stage_channels == (16, 32, 64, 128)
    assert m.blocks_per_stage == 2 and m.time_pool == 10 and m.embedding_dim == 128
    assert m.leaky_relu_slope == 0.1


def test_report_loss(cfg):
    assert cfg.loss.n_subclusters == 32
    assert math.isclose(cfg.loss.max_angle, math.pi / 4)


def test_report_training(cfg):
    for step in (cfg.stage1, cfg.stage2):
        assert step.optimizer == "adamp"
        assert step.lr == 1e-3 and step.weight_decay == 1e-5 and step.batch_size == 256
    assert cfg.stage1.epochs == 150
    assert cfg.stage2.iterations == 5000
    assert cfg.stage2.trainable == ("stage4",)


def test_design_detectors(cfg):
    d = cfg.detectors
    assert d.gmm_covariance == "full" and d.gmm_reg_covar == 1e-3
    assert d.threshold_quantile == 0.9
    assert d.threshold_scores == "out_of_fold" and d.threshold_folds == 5


def test_engine_defaults(cfg):
    e = cfg.engine
    assert e.name == "cpu" and e.amp_dtype == "bf16" and e.world_size == 2
    assert e.cache_on_device and e.sync_bn  # DDP batch norm over the global batch, as one GPU


def test_a_stored_config_older_than_a_key_loads_with_its_default(repo, tmp_path):
    """Runs made before detectors.threshold_scores/folds or engine.sync_bn existed still load;
    a key without a default stays required."""
    import yaml

    from asd.infra.config import ConfigError

    data = yaml.safe_load((repo / "config.yml").read_text())
    for key in ("threshold_scores", "threshold_folds"):
        del data["detectors"][key]
    del data["engine"]["sync_bn"]
    (tmp_path / "old.yml").write_text(yaml.safe_dump(data))
    old = load_config(tmp_path / "old.yml")
    d = old.detectors
    assert d.threshold_scores == "out_of_fold" and d.threshold_folds == 5
    assert old.engine.sync_bn
    del data["detectors"]["ocsvm_nu"]
    (tmp_path / "older.yml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="missing config key 'detectors.ocsvm_nu'"):
        load_config(tmp_path / "older.yml")


def test_overrides_are_typed(repo):
    cfg = load_config(
        repo / "config.yml",
        ["stage1.epochs=3", "stage1.lr=1e-2", "model.stage_channels=[8, 8, 8, 8]"],
    )
    assert cfg.stage1.epochs == 3 and cfg.stage1.lr == 0.01
    assert cfg.model.stage_channels == (8, 8, 8, 8)
    assert cfg.replace(**{"stage2.iterations": 7}).stage2.iterations == 7


@pytest.mark.parametrize(
    "override, words",
    [
        ("stage1.epoch=3", "stage1.epoch"),
        ("nothing.here=1", "nothing"),
        ("stage1.epochs=three", "stage1.epochs"),
        ("stage1.epochs=1.5", "stage1.epochs"),
        ("engine.name=tpu", "engine.name"),
        ("stage1=3", "override 'stage1' names a group"),
        ("stage1={epochs: 3}", "override 'stage1' names a group"),
        ("stage1.epochs", "key.sub=value"),
    ],
)
def test_bad_overrides_name_the_key(repo, override, words):
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        load_config(repo / "config.yml", [override])


def test_bad_files(tmp_path, repo):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yml")
    bad = tmp_path / "bad.yml"
    text = (repo / "config.yml").read_text()
    bad.write_text(text.replace("  epochs: 150", "  epochs: 150\n  epoks: 1"))
    with pytest.raises(ConfigError, match="stage1.epoks"):
        load_config(bad)
    bad.write_text("stage1: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("!!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError):
        load_config(bad)


def test_demo_extends_base(repo):
    demo = load_config(repo / "configs" / "demo.yml")
    base = load_config(repo / "config.yml")
    assert demo.data.root != base.data.root
    assert demo.features == base.features


def test_roundtrip(tmp_path, cfg):
    from asd.infra.config import save_config

    save_config(cfg, tmp_path / "c.yml")
    assert load_config(tmp_path / "c.yml") == cfg


def test_a_typo_names_the_nearest_key(repo, tmp_path):
    with pytest.raises(ConfigError, match=r"did you mean 'stage1\.epochs'\?"):
        load_config(repo / "config.yml", ["stage1.epoch=3"])
    bad = tmp_path / "bad.yml"
    bad.write_text((repo / "config.yml").read_text().replace("detectors:", "detector:"))
    with pytest.raises(
        ConfigError,
        match=r"unknown config key 'detector' \(did you mean "
        r"'detectors'\?",
    ):
        load_config(bad)


def test_data_defaults(cfg):
    """The data keys of issue 21: layout told from the folders, 2021's data, the near
    microphone (channel 0, as the organisers' baseline), classes as the layout builds them."""
    d = cfg.data
    assert d.layout == "auto" and d.year == 2021 and d.channel == 0 and d.classes == "auto"


def test_data_channel_takes_an_index_or_mean(repo):
    assert load_config(repo / "config.yml", ["data.channel=mean"]).data.channel == "mean"
    assert load_config(repo / "config.yml", ["data.channel=1"]).data.channel == 1
    with pytest.raises(ConfigError, match="data.channel"):
        load_config(repo / "config.yml", ["data.channel=left"])
    with pytest.raises(ConfigError, match="data.year"):
        load_config(repo / "config.yml", ["data.year=2020"])
