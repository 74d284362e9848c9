"""Training (activeseg.train): loss with ignore index, labels, determinism, warm start."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from activeseg.errors import ConfigError, LabelError, ModelError
from activeseg.infer import InferenceOptions, predict_stack
from activeseg.model import ModelConfig
from activeseg.train import IGNORE_INDEX, TrainConfig, collect_labels, segmentation_loss, train_model

TINY = ModelConfig(encoder_depth=3, decoder_channels=(16, 8, 8))
FAST = TrainConfig(steps=6, patch_size=32, batch_size=2, eval_every=3, device="cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _toy(z=10, y=48, x=48, seed=0):
    rng = np.random.default_rng(seed)
    truth = (ndimage.gaussian_filter(rng.random((z, y, x)), (2, 3, 3)) > 0.5).astype(np.uint8)
    img = (truth * 120.0 + 60 + rng.normal(0, 20, truth.shape)).clip(0, 255).astype(np.uint8)
    labels = np.full(truth.shape, IGNORE_INDEX, np.uint8)
    labels[[2, z - 3]] = truth[[2, z - 3]]
    return img, labels, truth


def _states_equal(a, b) -> bool:
    sa, sb = a.net.state_dict(), b.net.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ----------------------------------------------------------------------------- loss


def test_loss_ignores_unlabelled_pixels():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 16, 16, generator=g)
    target = torch.randint(0, 2, (2, 16, 16), generator=g)
    target[:, :8] = IGNORE_INDEX
    base = segmentation_loss(logits, target)
    changed = logits.clone()
    changed[:, :, :8] = torch.randn(2, 2, 8, 16, generator=g) * 10
    assert torch.equal(segmentation_loss(changed, target), base)
    # gradients at ignored pixels are exactly zero
    lg = logits.clone().requires_grad_(True)
    segmentation_loss(lg, target).backward()
    assert torch.all(lg.grad[:, :, :8] == 0)
    assert torch.any(lg.grad[:, :, 8:] != 0)
    # labelled pixels do matter
    flipped = target.clone()
    flipped[:, 8:] = 1 - flipped[:, 8:]
    assert not torch.equal(segmentation_loss(logits, flipped), base)


def test_loss_all_ignored_is_zero_and_perfect_is_small():
    logits = torch.zeros(1, 2, 4, 4, requires_grad=True)
    target = torch.full((1, 4, 4), IGNORE_INDEX)
    loss = segmentation_loss(logits, target)
    assert float(loss.detach()) == 0.0
    loss.backward()  # still differentiable
    t = torch.randint(0, 2, (1, 8, 8))
    perfect = torch.nn.functional.one_hot(t, 2).permute(0, 3, 1, 2).float() * 40 - 20
    assert float(segmentation_loss(perfect, t)) < 1e-3
    assert float(segmentation_loss(-perfect, t)) > 1.0


def test_training_ignores_slices_outside_the_labelled_context():
    img, labels, _ = _toy(z=12)
    labels[:] = IGNORE_INDEX
    labels[2] = (img[2] > 120).astype(np.uint8)
    labels[3, :, 24:] = IGNORE_INDEX  # nothing
    other = img.copy()
    other[8:] = 255 - other[8:]  # slices 8.. are outside the context of slice 2 (offsets +-2)
    other_labels = labels.copy()
    kw = dict(config=FAST, model_config=TINY, norm=(0.0, 255.0))
    a, _ = train_model(img, labels, rng=np.random.default_rng(5), **kw)
    b, _ = train_model(other, other_labels, rng=np.random.default_rng(5), **kw)
    assert _states_equal(a, b)
    # ...but slice 4 is in the context of slice 2, so changing it changes training
    other2 = img.copy()
    other2[4] = 255 - other2[4]
    c, _ = train_model(other2, labels, rng=np.random.default_rng(5), **kw)
    assert not _states_equal(a, c)


def test_training_is_deterministic_for_a_seed():
    img, labels, _ = _toy()
    kw = dict(config=FAST, model_config=TINY)
    a, ha = train_model(img, labels, rng=np.random.default_rng(1), **kw)
    b, hb = train_model(img, labels, rng=np.random.default_rng(1), **kw)
    c, _ = train_model(img, labels, rng=np.random.default_rng(2), **kw)
    assert _states_equal(a, b)
    assert ha["loss"] == hb["loss"]
    assert not _states_equal(a, c)
    # the global torch RNG is not consumed or reseeded
    torch.manual_seed(123)
    x = torch.rand(3)
    torch.manual_seed(123)
    train_model(img, labels, rng=np.random.default_rng(1), **kw)
    assert torch.equal(torch.rand(3), x)


def test_dict_labels_equal_array_labels():
    img, labels, _ = _toy()
    kw = dict(config=FAST, model_config=TINY)
    a, _ = train_model(img, labels, rng=np.random.default_rng(3), **kw)
    b, _ = train_model(img, {2: labels[2], 7: labels[7]}, rng=np.random.default_rng(3), **kw)
    assert _states_equal(a, b)


def test_scribbles_train_and_history_is_consistent():
    img, _, truth = _toy()
    labels = np.full(truth.shape, IGNORE_INDEX, np.uint8)
    labels[4, 10:12, :] = truth[4, 10:12, :]  # two scribbled rows
    labels[4, :, 30] = truth[4, :, 30]
    calls = []
    model, hist = train_model(
        img, labels, config=FAST, model_config=TINY, rng=np.random.default_rng(0),
        callback=lambda s, t, info: calls.append((s, t, info)),
    )
    assert hist["labelled_slices"] == [4]
    assert hist["n_train_pixels"] + hist["n_val_pixels"] == int(np.sum(labels != IGNORE_INDEX))
    assert [c[0] for c in calls] == list(range(1, hist["steps_run"] + 1))
    assert all(c[1] == hist["total_steps"] and math.isfinite(c[2]["loss"]) for c in calls)
    assert len(hist["loss"]) == hist["steps_run"]
    assert model.metadata["training"]["labelled_slices"] == [4]


def test_early_stopping_keeps_the_best_step():
    img, labels, _ = _toy()
    cfg = TrainConfig(steps=30, patch_size=32, batch_size=2, eval_every=1, patience=1, device="cpu")
    _, hist = train_model(img, labels, config=cfg, model_config=TINY, rng=np.random.default_rng(0))
    assert hist["stopped_early"]
    assert hist["steps_run"] < 30
    assert hist["best_val_loss"] == min(hist["val_loss"])
    assert hist["best_step"] == hist["val_step"][int(np.argmin(hist["val_loss"]))]
    assert hist["steps_run"] - hist["best_step"] >= 1
    # patience counts from the end of the warm-up (a warm start's loss rises while the lr climbs)
    slow = TrainConfig(steps=30, patch_size=32, batch_size=2, eval_every=1, patience=1, warmup=0.5, device="cpu")
    _, hist = train_model(img, labels, config=slow, model_config=TINY, rng=np.random.default_rng(0))
    assert hist["steps_run"] > 15


def test_no_validation_when_fraction_zero():
    img, labels, _ = _toy()
    cfg = TrainConfig(steps=4, patch_size=32, batch_size=2, val_fraction=0.0, device="cpu")
    _, hist = train_model(img, labels, config=cfg, model_config=TINY, rng=np.random.default_rng(0))
    assert hist["val_loss"] == [] and hist["n_val_pixels"] == 0 and hist["steps_run"] == 4


def test_epochs_define_the_number_of_steps():
    img, labels, _ = _toy(z=6, y=32, x=32)
    labels[:] = IGNORE_INDEX
    labels[3] = 1
    cfg = TrainConfig(epochs=2.0, patch_size=32, batch_size=2, val_fraction=0.0, device="cpu")
    _, hist = train_model(img, labels, config=cfg, model_config=TINY, rng=np.random.default_rng(0))
    assert hist["total_steps"] == math.ceil(2.0 * 32 * 32 / (2 * 32 * 32))


def test_warm_start():
    img, labels, _ = _toy()
    first, _ = train_model(img, labels, config=FAST, model_config=TINY, rng=np.random.default_rng(0))
    second, _ = train_model(img, labels, config=FAST, rng=np.random.default_rng(0), init=first)
    assert second.config == first.config
    assert second.norm == first.norm
    assert second.metadata["trainings"] == 2 and second.metadata["training"]["warm_start"]
    assert not _states_equal(first, second)
    with pytest.raises(ModelError, match="warm-start"):
        train_model(img, labels, config=FAST, model_config=ModelConfig(encoder_depth=3), rng=np.random.default_rng(0), init=first)


def test_warm_start_is_validated_before_the_first_step():
    img, labels, _ = _toy()
    good = TrainConfig(steps=40, patch_size=32, batch_size=2, eval_every=10, device="cpu")
    first, _ = train_model(img, labels, config=good, model_config=TINY, rng=np.random.default_rng(0))
    # a learning rate that wrecks the weights: every step is worse than the warm start
    bad = TrainConfig(steps=6, patch_size=32, batch_size=2, eval_every=2, lr=3.0, warmup=0.0, device="cpu")
    kept, hist = train_model(img, labels, config=bad, rng=np.random.default_rng(1), init=first)
    assert hist["val_step"][0] == 0 and hist["steps_run"] == 6
    assert hist["val_loss"][0] < min(hist["val_loss"][1:])
    assert hist["best_step"] == 0 and hist["kept_init"] and kept.metadata["training"]["kept_init"]
    assert _states_equal(first, kept)
    # a training that does improve replaces the warm start (here: one of 2 steps only)
    weak, _ = train_model(img, labels, config=dataclasses.replace(FAST, steps=2, val_fraction=0.0), model_config=TINY,
                          rng=np.random.default_rng(0))
    better, hist2 = train_model(img, labels, config=good, rng=np.random.default_rng(1), init=weak)
    assert hist2["val_step"][0] == 0 and hist2["best_step"] > 0
    assert not hist2["kept_init"] and not _states_equal(weak, better)
    assert hist2["best_val_loss"] < hist2["val_loss"][0]


def test_small_slices_are_padded():
    img, labels, _ = _toy(z=6, y=21, x=27)
    model, hist = train_model(img, labels, config=FAST, model_config=TINY, rng=np.random.default_rng(0))
    assert all(math.isfinite(v) for v in hist["loss"])
    assert predict_stack(model, img, options=InferenceOptions(device="cpu")).shape == (6, 2, 21, 27)


def test_bf16_autocast_and_channels_last_code_paths_on_cpu():
    img, labels, _ = _toy()
    cfg = TrainConfig(steps=3, patch_size=32, batch_size=2, eval_every=3, device="cpu", autocast="bf16", channels_last=True)
    model, hist = train_model(img, labels, config=cfg, model_config=TINY, rng=np.random.default_rng(0))
    assert all(math.isfinite(v) for v in hist["loss"] + hist["val_loss"])
    p32 = predict_stack(model, img, slices=[2, 3], options=InferenceOptions(device="cpu", autocast="off"))
    p16 = predict_stack(model, img, slices=[2, 3], options=InferenceOptions(device="cpu", autocast="bf16"))
    assert p16.dtype == np.float32
    np.testing.assert_allclose(p16.sum(axis=1), 1.0, atol=1e-5)
    assert np.abs(p16 - p32).mean() < 0.05


def test_label_errors():
    img, labels, _ = _toy()
    bad = labels.copy()
    bad[2, 0, 0] = 2
    with pytest.raises(LabelError, match="values"):
        train_model(img, bad, config=FAST, model_config=TINY, rng=np.random.default_rng(0))
    with pytest.raises(LabelError, match="shape"):
        train_model(img, labels[:, :10], config=FAST, model_config=TINY, rng=np.random.default_rng(0))
    with pytest.raises(LabelError, match="no labelled"):
        train_model(img, np.full_like(labels, IGNORE_INDEX), config=FAST, rng=np.random.default_rng(0))
    with pytest.raises(LabelError, match="global slice"):
        collect_labels({99: labels[2]}, img.shape, 2)
    with pytest.raises(ConfigError, match="rng"):
        train_model(img, labels, config=FAST, rng=1)


@pytest.mark.parametrize(
    "kw",
    [{"schedule": "linear"}, {"steps": 0}, {"lr": 0.0}, {"val_fraction": 0.7}, {"patience": 0},
     {"autocast": "fp16"}, {"patch_size": 8}, {"blur": 2.0}],
)
def test_train_config_validation(kw):
    with pytest.raises(ConfigError):
        TrainConfig(**kw)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_training_and_inference():
    img, labels, _ = _toy()
    cfg = TrainConfig(steps=5, patch_size=32, batch_size=2, eval_every=5, device="cuda")
    model, hist = train_model(img, labels, config=cfg, model_config=TINY, rng=np.random.default_rng(0))
    assert hist["device"].startswith("cuda")
    p_gpu = predict_stack(model, img, options=InferenceOptions(device="cuda"))
    p_cpu = predict_stack(model, img, options=InferenceOptions(device="cpu"))
    assert np.abs(p_gpu - p_cpu).mean() < 0.05  # bf16 on the GPU vs fp32 on the CPU


@pytest.mark.parametrize("value", [257, -1])
def test_label_values_are_checked_before_any_cast(value):
    labels = np.full((4, 8, 8), 255, np.int32)
    labels[1] = 0
    labels[1, 0, 0] = value  # would wrap to 1 or to 255 (unlabelled) as uint8
    with pytest.raises(LabelError, match=str(value)):
        collect_labels(labels, (4, 8, 8), 2)
    with pytest.raises(LabelError, match=str(value)):
        collect_labels({1: labels[1]}, (4, 8, 8), 2)


def test_held_out_squares_do_not_depend_on_the_labels():
    from activeseg.holdout import split_validation as _split_validation

    scribbles = np.zeros((96, 96), bool)
    scribbles[::7, :] = True  # sparse strokes over the whole slice
    full = np.ones((96, 96), bool)  # the same slice after a full correction
    held_before = _split_validation(scribbles, 0.2, 16, np.random.default_rng([0, 5]))
    held_after = _split_validation(full, 0.2, 16, np.random.default_rng([0, 5]))
    assert held_before.any()
    # nothing trained on with the scribbles is validated on after the correction
    assert not np.any(held_after & scribbles & ~held_before)
    assert np.array_equal(held_after & scribbles, held_before)
