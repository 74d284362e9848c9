"""The model gate (a new network never silently replaces a better model) and training with
pseudo-labels, through the library and the CLI on tiny data."""

import json

import numpy as np
import pytest
from cli_run import ok

from activeseg import io
from activeseg.holdout import held_out_labels, session_rule, without_held_out
from activeseg.loop.gate import headline_iou, judge

pytestmark = pytest.mark.usefixtures("one_torch_thread")



def manifest(s):
    return json.loads((s / "activeseg.json").read_text())


class Fixed:
    """A model that predicts given label slices (one-hot probabilities)."""

    def __init__(self, labels, n_classes=2):
        self.labels, self.n_classes = labels, n_classes

    def predict_proba(self, image, zs):
        return np.stack([np.eye(self.n_classes, dtype=np.float32)[self.labels[z]].transpose(2, 0, 1) for z in zs])


def test_headline_is_solid_iou_for_two_classes_and_mean_solid_iou_for_more():
    truth = np.array([0, 0, 1, 1, 2, 2])
    assert headline_iou(np.array([0, 1, 1, 1]), np.array([0, 0, 1, 1]), 2) == pytest.approx(0.5)
    # classes 0 and 2 are solids, 1 is pore: IoU(0) = 1/2, IoU(2) = 2/2
    assert headline_iou(np.array([0, 1, 1, 1, 2, 2]), truth, 3) == pytest.approx(0.75)
    assert headline_iou(np.array([1, 1]), np.array([1, 1]), 2) == 1.0  # no solid in either: predicted perfectly
    assert headline_iou(np.array([0, 0]), np.array([1, 1]), 2) == 0.0
    assert headline_iou(np.array([], int), np.array([], int), 2) is None


def test_judge_accepts_only_a_better_candidate_and_ties_keep_the_incumbent():
    rng = np.random.default_rng(0)
    truth = {z: (rng.random((64, 64)) < 0.7).astype(np.uint8) for z in (2, 5)}
    held = held_out_labels(truth, fraction=0.3, block=8, seed=1)
    assert held and all((v != 255).any() for v in held.values())
    worse = {z: np.where(rng.random((64, 64)) < 0.3, 1 - t, t).astype(np.uint8) for z, t in truth.items()}
    perfect, noisy = Fixed(truth), Fixed(worse)
    v = judge(perfect, noisy, None, held, 2, incumbent_kind="rf", incumbent_version="rf-x")
    assert v.accepted and v.verified and v.candidate == pytest.approx(1.0) and v.incumbent < 0.9
    assert "the new network is the current model" in v.sentence() and f"{v.incumbent:.4f}" in v.sentence()
    v = judge(noisy, perfect, None, held, 2, incumbent_kind="rf", incumbent_version="rf-x")
    assert not v.accepted and "kept the Random Forest" in v.sentence()
    v = judge(perfect, perfect, None, held, 2, incumbent_kind="resunet", incumbent_version="r1")
    assert not v.accepted and v.verified  # a tie keeps the incumbent
    v = judge(noisy, perfect, None, {}, 2, incumbent_kind="rf", incumbent_version="rf-x")
    assert v.accepted and not v.verified and "unverified" in v.sentence()


def test_held_out_pixels_are_left_out_of_a_fit_and_are_exactly_the_gate_pixels():
    labels = {3: np.zeros((64, 64), np.uint8), 9: np.ones((64, 64), np.uint8)}
    rule = session_rule({"val_block": 8}, seed=4)
    fit = without_held_out(labels, **rule)
    held = held_out_labels(labels, **rule)
    for z in labels:
        gate_px = held[z] != 255
        assert gate_px.any() and np.all(fit[z][gate_px] == 255)
        assert np.all(fit[z][~gate_px] == labels[z][~gate_px])


def test_weighted_loss_with_unit_weights_is_the_plain_loss_and_a_zero_weight_patch_counts_for_nothing():
    import torch

    from activeseg.train import segmentation_loss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 8, 8, generator=g)
    target = torch.randint(0, 2, (2, 8, 8), generator=g)
    plain = segmentation_loss(logits, target)
    assert torch.allclose(segmentation_loss(logits, target, weight=torch.ones(2)), plain)
    only_first = segmentation_loss(logits[:1], target[:1])
    # the second patch adds nothing, and the batch's mean weight (1/2) scales the first
    assert torch.allclose(segmentation_loss(logits, target, weight=torch.tensor([1.0, 0.0])), 0.5 * only_first, atol=1e-6)


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_config):
    d = tmp_path_factory.mktemp("gate")
    ok(["synth", d / "vol", "--shape", 12, 64, 64, "--seed", 2])
    tiny_config(d / "tiny.toml", train={"val_block": 8})
    tiny_config(d / "nopseudo.toml", train={"val_block": 8}, session={"pseudo_train": "off"})
    return d


def _init(data, tmp_path, config="tiny.toml"):
    s = tmp_path / "s"
    ok(["init", s, "--image", data / "vol" / "image.tif", "--config", data / config])
    ok(["bootstrap", s, "--slices", "2,6,10"])
    return s


def test_a_weak_network_is_turned_down_and_the_rf_stays_current(data, tmp_path):
    s = _init(data, tmp_path)
    ok(["export", s, tmp_path / "rf.tif"])
    out = ok(["train", s, "--steps", "1"])
    gate = manifest(s)["rounds"][-1]["gate"]
    assert gate["verified"] and not gate["accepted"] and gate["incumbent_kind"] == "rf"
    assert gate["candidate"] < gate["incumbent"]
    assert "kept the Random Forest" in out and f"{gate['incumbent']:.4f}" in out
    st = json.loads(ok(["status", s, "--json"]))
    assert st["current_model"]["kind"] == "rf" and "kept the Random Forest" in st["current_model"]["why"]
    assert st["rounds"][0]["gate"]["accepted"] is False
    # export still gives the RF's segmentation, and the candidate was kept as the best network so far
    ok(["export", s, tmp_path / "after.tif"])
    assert np.array_equal(io.read_stack(tmp_path / "rf.tif"), io.read_stack(tmp_path / "after.tif"))
    assert manifest(s)["model"]["path"] == manifest(s)["rounds"][-1]["candidate_model"]
    # whole-stack figures: the current model's (the RF's) and the candidate's, both recorded
    r = manifest(s)["rounds"][-1]
    assert r["metrics"]["iou_solid"] != r["candidate_metrics"]["iou_solid"]


def test_a_better_network_replaces_the_current_one(data, tmp_path):
    s = _init(data, tmp_path)
    ok(["train", s, "--steps", "1", "--no-gate"])
    m = manifest(s)
    assert m["current"]["kind"] == "resunet" and m["rounds"][-1]["gate"]["gated"] is False
    weak = m["current"]["version"]
    ok(["train", s, "--steps", "40"])
    m = manifest(s)
    gate = m["rounds"][-1]["gate"]
    assert gate["incumbent_kind"] == "resunet" and gate["incumbent_version"] == weak
    assert gate["accepted"] and gate["candidate"] > gate["incumbent"]
    assert m["current"]["version"] == gate["candidate_version"] == m["model"]["version"]
    assert m["rounds"][-1]["train"]["warm_start_from"] == weak


def test_pseudo_labels_join_training_while_few_slices_are_labelled(data, tmp_path):
    s = _init(data, tmp_path)
    ok(["train", s])
    p = manifest(s)["rounds"][-1]["train"]["pseudo"]
    assert p["source"] == "rf" and p["threshold"] == 0.9 and p["pixels"] > 0
    assert len(p["slices"]) == 8 and not set(p["slices"]) & {2, 6, 10}
    off = _init(data, tmp_path / "off", config="nopseudo.toml")
    ok(["train", off])
    assert manifest(off)["rounds"][-1]["train"]["pseudo"] is None


def test_a_round_whose_whole_stack_figures_fall_is_flagged(data, tmp_path, monkeypatch):
    from activeseg.loop import steps

    s = _init(data, tmp_path)
    real = steps.evaluate_model
    figures = iter([0.9, 0.7])

    def evaluate(*a, **kw):  # the same evaluation, with a falling headline figure
        ev = real(*a, **kw)
        ev["overall"]["iou_solid"] = next(figures)
        return ev

    monkeypatch.setattr(steps, "evaluate_model", evaluate)
    ok(["train", s, "--no-gate"])
    assert "metrics_fell" not in manifest(s)["rounds"][-1]
    ok(["query", s, "-n", "1"])
    zs = [int(p.name[1:5]) for p in (s / "rounds" / "r001").glob("z*_mask.tif")]
    truth = io.read_stack(data / "vol" / "truth.tif")
    for z in zs:
        io.write_stack(s / "rounds" / "r001" / f"z{z:04d}_mask.tif", truth[z][None], kind="labels")
    ok(["import", s])
    out = ok(["train", s, "--no-gate"])
    fell = manifest(s)["rounds"][-1]["metrics_fell"]
    assert fell == {"metric": "solid_iou", "before": 0.9, "after": 0.7}
    assert "fell from 0.9000 to 0.7000" in out
    assert " fell" in ok(["status", s])


def test_the_session_rf_is_fitted_without_the_gate_pixels(data, tmp_path, monkeypatch):
    from activeseg.loop import state

    seen = {}
    real = state.fit_rf

    def spy(image, labels, **kw):
        seen.update(labels)
        return real(image, labels, **kw)

    monkeypatch.setattr(state, "fit_rf", spy)
    state._RF_CACHE.clear()
    s = _init(data, tmp_path)
    truth = io.read_stack(data / "vol" / "truth.tif")
    held = held_out_labels({z: truth[z].astype(np.uint8) for z in (2, 6, 10)}, **session_rule({"val_block": 8}, seed=0))
    assert sorted(seen) == [2, 6, 10] and held
    for z, v in held.items():
        px = v != 255
        assert np.all(seen[z][px] == 255)  # the RF never saw the pixels the gate judges on
        assert np.array_equal(seen[z][~px], truth[z][~px])
    assert manifest(s)["rf"]["path"].startswith("rf/")


def test_unrelated_sections_one_labelled_export_is_never_worse_than_the_rf(tmp_path, tiny_config):
    from activeseg.synth import synthesize

    vols = [synthesize((8, 96, 96), seed=s) for s in (11, 12, 13)]  # three places of a sample, not neighbours
    io.write_stack(tmp_path / "img.tif", np.stack([v.image[4] for v in vols]))
    truth = np.stack([v.truth[4] for v in vols]).astype(np.uint8)
    io.write_stack(tmp_path / "truth.tif", truth, kind="labels")
    cfg = tiny_config(tmp_path / "c.toml", session={"export_radius": 0}, train={"val_block": 16, "steps": 30})
    s = tmp_path / "s"
    ok(["init", s, "--image", tmp_path / "img.tif", "--truth", tmp_path / "truth.tif", "--config", cfg, "--sections"])
    ok(["bootstrap", s, "--slices", "0"])
    ok(["export", s, tmp_path / "rf.tif"])
    ok(["train", s])
    ok(["export", s, tmp_path / "after.tif"])

    def accuracy(path):
        return float(np.mean(io.read_stack(path)[1:] == truth[1:]))

    assert accuracy(tmp_path / "after.tif") >= accuracy(tmp_path / "rf.tif") - 0.005
    st = json.loads(ok(["status", s, "--json"]))
    gate = st["rounds"][0]["gate"]
    assert gate["verified"] and gate["incumbent_kind"] == "rf"
    assert st["current_model"]["kind"] == ("resunet" if gate["accepted"] else "rf")
    assert f"{gate['candidate']:.4f}" in st["current_model"]["why"]


def test_a_pseudo_labelled_patch_weighs_less_and_a_perfect_one_costs_nothing():
    import torch

    from activeseg.train import segmentation_loss

    target = torch.randint(0, 2, (1, 16, 16), generator=torch.Generator().manual_seed(1))
    perfect = torch.nn.functional.one_hot(target, 2).permute(0, 3, 1, 2).float() * 40 - 20  # confident and right
    assert float(segmentation_loss(perfect, target, weight=torch.tensor([0.3]))) < 1e-2
    wrong = -perfect
    full = segmentation_loss(wrong, target, weight=torch.tensor([1.0]))
    assert torch.allclose(segmentation_loss(wrong, target, weight=torch.tensor([0.3])), 0.3 * full, rtol=1e-3)


def test_when_every_slice_is_labelled_the_next_step_is_export(data, tmp_path):
    s = tmp_path / "s"
    ok(["init", s, "--image", data / "vol" / "image.tif", "--config", data / "tiny.toml"])
    ok(["bootstrap", s, "--slices", ",".join(map(str, range(12)))])
    assert "activeseg export" in json.loads(ok(["status", s, "--json"]))["next_step"]
