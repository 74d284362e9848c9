"""The session config: every table, key and value checked before a session is created."""

import pytest

from activeseg.config import SessionConfig, load_config, validate_config
from activeseg.errors import ConfigError


def _toml(tmp_path, text):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_a_valid_file_reads_into_session_settings(tmp_path):
    p = _toml(tmp_path, """
[geometry]
voxel_size = [10, 5, 5]
alpha_deg = 54
[session]
export_radius = 2
pseudo_threshold = 1
[rf]
n_estimators = 8
[train]
steps = 5
""")
    d = load_config(p)
    cfg = SessionConfig.from_dict(d)
    assert cfg.export_radius == 2 and cfg.pseudo_threshold == 1.0 and isinstance(cfg.pseudo_threshold, float)
    assert cfg.geometry.voxel_size == (10.0, 5.0, 5.0) and cfg.geometry.alpha_deg == 54
    assert cfg.rf == {"n_estimators": 8} and cfg.train == {"steps": 5}


@pytest.mark.parametrize("text, says", [
    ('[session]\nexport_radius = "two"', "[session] export_radius: expected an integer, got 'two' (str)"),
    ("[session]\nexport_radius = 1.5", "[session] export_radius: expected an integer"),
    ("[session]\ntrain_on_scribbles = 1", "[session] train_on_scribbles: expected true or false"),
    ("[session]\nscore_reduction = \"median\"", "[session] score_reduction: expected one of mean, quantile, boundary"),
    ("[session]\nn_classes = 1", "[session] n_classes: expected an integer from 2 to 254"),
    ("[session]\nbald_samples = 1", "[session] bald_samples: expected an integer >= 2"),
    ("[session]\npseudo_threshold = 0.2", "[session] pseudo_threshold: expected a probability from 0.5 to 1"),
    ("[session]\nexport_raduis = 2", "[session] has unknown key(s) export_raduis; valid keys:"),
    ("[geometry]\nvoxel_sise = [1, 1, 1]",
     "[geometry] has unknown key(s) voxel_sise; valid keys: alpha_deg, beam_sign, voxel_size"),
    ("[geometry]\nvoxel_size = [1, 1]", "[geometry] voxel_size: expected three positive numbers"),
    ("[geometry]\nbeam_sign = 2", "[geometry] beam_sign: expected 1 or -1"),
    ("[geometry]\nalpha_deg = 95", "[geometry] alpha_deg: expected an angle between 0 and 90"),
    ('[rf]\nn_estimators = "many"', "[rf] n_estimators: expected an integer, got 'many'"),
    ("[rf]\nn_estimators = 0", "[rf] n_estimators: expected an integer >= 1"),
    ("[rf]\nmax_samples = 2.0", "[rf] max_samples: expected a fraction in (0, 1]"),
    ("[rf]\ntrees = 8", "[rf] has unknown key(s) trees"),
    ("[rf.features]\nscales = \"big\"", "[rf.features] scales: expected a list of"),
    ("[train]\nsteps = -5", "[train] TrainConfig.steps must be a positive integer"),
    ('[train]\ndevice = "tpu"', "[train] device: expected one of auto, cpu, cuda, mps or cuda:N"),
    ('[model]\nencoder = "resnet1800"', "[model] encoder: expected an encoder of segmentation-models-pytorch"),
    ('[model]\narch = "Unet3000"', "[model] arch: expected one of"),
    ("[model]\ndropout = 1.5", "[model] dropout must be a probability in [0, 1)"),
    ("[sessoin]\nseed = 1", "unknown table(s) or top-level key(s) sessoin"),
    ("seed = 1", "unknown table(s) or top-level key(s) seed"),
    ("[session\n", "not valid TOML"),
])
def test_every_mistake_names_table_key_expected_and_got(tmp_path, text, says):
    p = _toml(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(p)
    assert says in str(err.value)
    assert str(err.value).startswith(f"config file {p}: ")


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="it is a folder"):
        load_config(tmp_path)


def test_values_from_python_are_checked_too():
    with pytest.raises(ConfigError, match=r"\[session\] seed: expected an integer >= 0"):
        SessionConfig(seed=-1)
    with pytest.raises(ConfigError, match="unknown session setting"):
        SessionConfig.from_dict({"sed": 1})
    cfg = SessionConfig(rf={"max_depth": 0})
    with pytest.raises(ConfigError, match=r"\[rf\] max_depth: expected an integer >= 1"):
        validate_config(cfg)


def test_defaults_validate_without_torch_work():
    assert validate_config(SessionConfig()) == SessionConfig()
