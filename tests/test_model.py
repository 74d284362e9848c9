"""Model factory, 2.5D input (activeseg.model), SegModel and save/load (activeseg.network)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from activeseg.errors import ConfigError, ModelError, StackError
from activeseg.model import (
    ModelConfig,
    available_architectures,
    available_encoders,
    build_model,
    context_indices,
    intensity_range,
    make_input,
    network_multiple,
    resolve_device,
)
from activeseg.network import SegModel, load_model, save_model
from activeseg.uncertainty import EnsembleModel, ProbabilityModel

TINY = ModelConfig(encoder_depth=3, decoder_channels=(32, 16, 8))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tiny_model(seed: int = 0, **kw) -> SegModel:
    cfg = ModelConfig(**{**TINY.to_dict(), **kw})
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = build_model(cfg)
        # non-trivial batch-norm statistics, so that eval mode and fusion matter
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    net.eval()
    return SegModel(net=net, config=cfg, norm=(10.0, 240.0), metadata={"note": "test"}, device="cpu")


def _stack(z=8, y=48, x=40, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (z, y, x), dtype=np.uint8)


# ----------------------------------------------------------------------------- factory


def test_unknown_architecture_lists_choices():
    with pytest.raises(ModelError) as e:
        build_model(ModelConfig(arch="NoSuchNet"))
    msg = str(e.value)
    assert "NoSuchNet" in msg and "Unet" in msg and "FPN" in msg
    assert isinstance(e.value, ValueError)


def test_unknown_encoder_lists_choices():
    with pytest.raises(ModelError) as e:
        build_model(ModelConfig(encoder="resnet19"))
    msg = str(e.value)
    assert "resnet19" in msg and "resnet18" in msg and "resnet34" in msg


def test_unknown_timm_encoder():
    with pytest.raises(ModelError, match="timm"):
        build_model(ModelConfig(encoder="tu-not_a_timm_model_xyz"))


@pytest.mark.parametrize(
    "kw",
    [
        {"dropout": 1.0},
        {"dropout": -0.1},
        {"offsets": (0, 0, 1)},
        {"offsets": ()},
        {"n_classes": 1},
        {"encoder_depth": 7},
        {"encoder_depth": 3, "decoder_channels": (32, 16)},
        {"encoder_weights": 3},
    ],
)
def test_config_validation(kw):
    with pytest.raises(ModelError):
        ModelConfig(**kw)


def test_decoder_channels_rejected_for_non_unet():
    with pytest.raises(ModelError, match="Unet family"):
        build_model(ModelConfig(arch="FPN", encoder_depth=3, decoder_channels=(32, 16, 8)))


def test_lists_come_from_smp():
    assert "Unet" in available_architectures()
    assert "resnet18" in available_encoders()


def test_built_network_shapes_and_dropout():
    model = _tiny_model()
    assert model.config.in_channels == 5
    x = torch.zeros(2, 5, 32, 32)
    with torch.no_grad():
        y = model.net(x)
    assert y.shape == (2, 2, 32, 32)
    drops = [m for m in model.net.modules() if isinstance(m, torch.nn.Dropout2d)]
    assert len(drops) >= 2  # before the head and in the decoder
    assert network_multiple(model.net, model.config) == 8
    no_drop = build_model(ModelConfig(**{**TINY.to_dict(), "dropout": 0.0}))
    assert not any(isinstance(m, torch.nn.Dropout2d) for m in no_drop.modules())


def test_resunet_alias_and_single_slice():
    cfg = ModelConfig(arch="resunet", encoder_depth=3, decoder_channels=(16, 8, 8), offsets=(0,))
    net = build_model(cfg)
    assert type(net).__name__ == "Unet"
    with torch.no_grad():
        assert net.eval()(torch.zeros(1, 1, 16, 16)).shape == (1, 2, 16, 16)


def test_other_architecture_builds():
    net = build_model(ModelConfig(arch="Linknet", encoder_depth=3, offsets=(-1, 0, 1)))
    with torch.no_grad():
        assert net.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 2, 32, 32)


def test_architecture_with_wrong_output_size_is_refused():
    # smp's FPN always upsamples its head by 4, which only fits encoder_depth=5
    with pytest.raises(ModelError, match="encoder_depth"):
        build_model(ModelConfig(arch="FPN", encoder_depth=3))


# ----------------------------------------------------------------------------- 2.5D input


def test_context_indices_clamp_at_edges():
    offs = (-2, -1, 0, 1, 2)
    assert context_indices(0, offs, 10).tolist() == [0, 0, 0, 1, 2]
    assert context_indices(1, offs, 10).tolist() == [0, 0, 1, 2, 3]
    assert context_indices(9, offs, 10).tolist() == [7, 8, 9, 9, 9]
    assert context_indices(5, offs, 10).tolist() == [3, 4, 5, 6, 7]
    assert context_indices([0, 9], (0,), 10).tolist() == [[0], [9]]
    assert context_indices(0, offs, 1).tolist() == [0, 0, 0, 0, 0]
    with pytest.raises(StackError):
        context_indices(10, offs, 10)


class _Recording:
    """A stack that records which slices were read."""

    def __init__(self, a):
        self.a = a
        self.shape = a.shape
        self.dtype = a.dtype
        self.reads: list[int] = []

    def __getitem__(self, key):
        out = self.a[key]
        idx = np.arange(self.shape[0])[key]
        self.reads.extend(np.atleast_1d(idx).tolist())
        return out


def test_make_input_uses_clamped_context_and_reads_only_needed_slices():
    z = 10
    img = np.broadcast_to(np.arange(z, dtype=np.uint8)[:, None, None] * 10, (z, 4, 6)).copy()
    rec = _Recording(img)
    x = make_input(rec, [0, 9], (-2, -1, 0, 1, 2), (0.0, 90.0))
    assert x.shape == (2, 5, 4, 6) and x.dtype == np.float32
    # slice value v*10 normalised with (0, 90): 2 * v * 10 / 90 - 1
    expect0 = [2 * v * 10 / 90 - 1 for v in (0, 0, 0, 1, 2)]
    expect9 = [2 * v * 10 / 90 - 1 for v in (7, 8, 9, 9, 9)]
    np.testing.assert_allclose(x[0, :, 0, 0], expect0, rtol=1e-6)
    np.testing.assert_allclose(x[1, :, 0, 0], expect9, rtol=1e-6)
    assert sorted(set(rec.reads)) == [0, 1, 2, 7, 8, 9]
    assert len(rec.reads) == 6  # each context slice read once


def test_make_input_rejects_bad_stack():
    with pytest.raises(StackError, match="RGB"):
        make_input(np.zeros((4, 8, 8, 3)), [0], (0,), (0, 1))
    with pytest.raises(ConfigError):
        make_input(np.zeros((4, 8, 8)), [4], (0,), (0, 1))


def test_intensity_range():
    img = np.zeros((4, 100, 100), dtype=np.uint16)
    img[:, :50] = 1000
    img[:, 50:] = 3000
    lo, hi = intensity_range(img)
    assert lo == pytest.approx(1000) and hi == pytest.approx(3000)
    lo, hi = intensity_range(np.full((2, 8, 8), 7, dtype=np.uint8))
    assert hi > lo


# ----------------------------------------------------------------------------- SegModel / IO


def test_segmodel_satisfies_protocols():
    model = _tiny_model()
    assert isinstance(model, ProbabilityModel)
    assert isinstance(model, EnsembleModel)
    assert model.n_classes == 2


def test_save_load_round_trip(tmp_path):
    model = _tiny_model(seed=3)
    img = _stack(6, 40, 56)
    before = model.predict_proba(img, [0, 3, 5])
    save_model(model, tmp_path / "m")
    files = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert files == ["model.json", "model.safetensors"]
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["norm"] == [10.0, 240.0]
    loaded = load_model(tmp_path / "m", device="cpu")
    assert loaded.config == model.config
    assert loaded.norm == model.norm
    assert loaded.metadata == {"note": "test"}
    after = loaded.predict_proba(img, [0, 3, 5])
    np.testing.assert_array_equal(before, after)
    for (k1, v1), (k2, v2) in zip(model.net.state_dict().items(), loaded.net.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)


def test_load_errors(tmp_path):
    with pytest.raises(ModelError, match="model.json"):
        load_model(tmp_path)
    save_model(_tiny_model(), tmp_path / "a")
    meta = json.loads((tmp_path / "a" / "model.json").read_text())
    meta["config"]["decoder_channels"] = [16, 16, 8]  # no longer matches the weights
    (tmp_path / "a" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="do not match"):
        load_model(tmp_path / "a")
    meta["format"] = "something-else"
    (tmp_path / "a" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="not an activeseg model"):
        load_model(tmp_path / "a")


def test_save_rejects_non_json_metadata(tmp_path):
    model = _tiny_model()
    model.metadata = {"bad": object()}
    with pytest.raises(ModelError, match="JSON"):
        save_model(model, tmp_path / "m")


def test_segmodel_rejects_bad_norm():
    with pytest.raises(ModelError):
        SegModel(net=build_model(TINY), config=TINY, norm=(5.0, 5.0))


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            resolve_device("cuda")
