"""Stack inference (activeseg.infer): shapes, padding, tiling, streaming, MC dropout, TTA, embeddings."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import ndimage

from activeseg.errors import ConfigError, ModelError
from activeseg.infer import (
    InferenceOptions,
    TTATransform,
    encoder_embeddings,
    fuse_batchnorm,
    mc_dropout_proba,
    pad_to_multiple,
    predict_stack,
    tile_plan,
    tta_proba,
)
from activeseg.model import ModelConfig, build_model, make_input
from activeseg.network import SegModel
from activeseg.train import IGNORE_INDEX, TrainConfig, train_model

TINY = ModelConfig(encoder_depth=3, decoder_channels=(32, 16, 8))
CPU = InferenceOptions(device="cpu")

# float32 network outputs computed through different kernels - another batch size, another
# memory layout (channels_last), batch norm folded or not - agree only to float32 rounding:
# oneDNN picks its convolution kernels by shape and by CPU (and thread count), and so does
# the order of the sums. Measured differences are up to ~2e-6 on these probabilities; 1e-5
# leaves room for other CPUs. Identical code paths (same batch, same shapes) are compared
# exactly or at 1e-6.
F32 = dict(rtol=1e-5, atol=1e-5)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _toy(z=12, y=64, x=64, seed=0):
    rng = np.random.default_rng(seed)
    truth = (ndimage.gaussian_filter(rng.random((z, y, x)), (2, 3, 3)) > 0.5).astype(np.uint8)
    img = (truth * 120.0 + 60 + rng.normal(0, 25, truth.shape)).clip(0, 255).astype(np.uint8)
    return img, truth


@pytest.fixture(scope="module")
def trained():
    img, truth = _toy()
    labels = np.full(truth.shape, IGNORE_INDEX, np.uint8)
    labels[[2, 6, 9]] = truth[[2, 6, 9]]
    cfg = TrainConfig(steps=20, patch_size=64, batch_size=4, eval_every=10, device="cpu")
    model, _ = train_model(img, labels, config=cfg, model_config=TINY, rng=np.random.default_rng(1))
    model.device = "cpu"
    return model, img, truth


def _plain(model: SegModel, img, slices):
    """Reference: the unmodified network, one batch, padded by hand."""
    x = torch.from_numpy(make_input(img, slices, model.offsets, model.norm))
    h, w = x.shape[-2:]
    with torch.no_grad():
        return torch.softmax(model.net.eval()(pad_to_multiple(x, model.multiple)), 1)[..., :h, :w].numpy()


def test_predict_shapes_and_probabilities(trained):
    model, img, truth = trained
    p = predict_stack(model, img, options=CPU)
    assert p.shape == (12, 2, 64, 64) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    assert (p.argmax(1) == truth).mean() > 0.85  # it learned something
    sub = predict_stack(model, img, slices=[5, 2], options=replace(CPU, batch_size=1))
    np.testing.assert_allclose(sub, p[[5, 2]], **F32)  # batches of 1 vs 4
    assert predict_stack(model, img, slices=[], options=CPU).shape == (0, 2, 64, 64)


def test_matches_plain_network_with_random_batchnorm_stats():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = build_model(TINY)
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.2, 0.2)
    model = SegModel(net=net.eval(), config=TINY, norm=(0.0, 255.0), device="cpu")
    img = np.random.default_rng(0).integers(0, 256, (6, 45, 37), dtype=np.uint8)  # odd sizes: padded
    p = predict_stack(model, img, options=replace(CPU, batch_size=3))
    assert p.shape == (6, 2, 45, 37)
    np.testing.assert_allclose(p, _plain(model, img, range(6)), **F32)  # folded BN, batches of 3 vs 6
    for flag in (True, False):
        np.testing.assert_allclose(predict_stack(model, img, options=replace(CPU, channels_last=flag)), p, **F32)


def test_fuse_batchnorm_folds_all_pairs():
    net = build_model(TINY).eval()
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    used = fuse_batchnorm(net)
    assert used > 0
    # every BatchNorm of the used encoder stages and the decoder is gone
    left = [n for n, m in net.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(n.startswith("encoder.layer4") for n in left), left  # layer4 is unused at depth 3
    assert used + len(left) == n_bn


def test_pad_to_multiple():
    x = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(1, 1, 5, 6)
    y = pad_to_multiple(x, 4)
    assert y.shape == (1, 1, 8, 8)
    torch.testing.assert_close(y[..., :5, :6], x)
    torch.testing.assert_close(y[..., 5, :6], x[..., 3, :])  # reflection, edge not repeated
    tiny = torch.ones(1, 1, 2, 2)
    assert pad_to_multiple(tiny, 8).shape == (1, 1, 8, 8)  # too small to reflect: replicate


def test_tile_plan_covers_with_overlap():
    plan = tile_plan(100, 70, 32, 8)
    cover = np.zeros((100, 70))
    wsum = np.zeros((100, 70))
    for y0, y1, x0, x1, w in plan:
        assert (y1 - y0, x1 - x0) == (32, 32) and w.shape == (32, 32)
        assert np.all(w > 0) and np.all(w <= 1)
        cover[y0:y1, x0:x1] += 1
        wsum[y0:y1, x0:x1] += w
    assert cover.min() >= 1 and wsum.min() > 0
    ys = sorted({p[0] for p in plan})
    assert all(b - a <= 32 - 8 for a, b in zip(ys, ys[1:]))
    # a slice no larger than the tile is one tile with a flat window
    ((y0, y1, x0, x1, w),) = tile_plan(30, 20, 32, 8)
    assert (y0, y1, x0, x1) == (0, 30, 0, 20) and np.all(w == 1)


def test_tiled_matches_untiled(trained):
    model, img, _ = trained
    full = predict_stack(model, img, options=CPU)
    tiled = predict_stack(model, img, options=replace(CPU, batch_size=3, tile=48, overlap=16))
    diff = np.abs(tiled - full)
    assert diff.mean() < 0.02
    assert (tiled.argmax(1) == full.argmax(1)).mean() > 0.98
    # where one tile covers the whole slice, tiling changes nothing (the very same code
    # path and batches as untiled, hence the tight tolerance)
    np.testing.assert_allclose(predict_stack(model, img, options=replace(CPU, tile=64, overlap=16)), full, atol=1e-6)


def test_context_clamping_in_inference(trained):
    model, img, _ = trained
    # a fixed range: with per-stack percentiles a changed slice may move the whole stack's range
    model = replace(model, norm_mode="fixed")
    base = predict_stack(model, img, options=CPU)
    changed = img.copy()
    changed[3] = 255 - changed[3]
    p = predict_stack(model, changed, options=CPU)
    moved = [z for z in range(12) if np.abs(p[z] - base[z]).max() > 1e-6]
    assert moved == [1, 2, 3, 4, 5]  # offsets -2..2 around slice 3
    changed = img.copy()
    changed[0] = 255 - changed[0]
    p = predict_stack(model, changed, options=CPU)
    assert [z for z in range(12) if np.abs(p[z] - base[z]).max() > 1e-6] == [0, 1, 2]


class _Recording:
    def __init__(self, a):
        self.a, self.shape, self.dtype, self.reads = a, a.shape, a.dtype, []

    def __getitem__(self, key):
        self.reads.extend(np.atleast_1d(np.arange(self.shape[0])[key]).tolist())
        return self.a[key]


def test_streams_into_out_and_reads_only_needed_slices(trained, tmp_path):
    model, img, _ = trained
    full = predict_stack(model, img, options=CPU)
    out = np.lib.format.open_memmap(tmp_path / "p.npy", mode="w+", dtype=np.float32, shape=img.shape)
    out[:] = np.nan
    rec = _Recording(img)
    model.stack_norm(rec)  # the stack's own intensity range: read once per stack (<= 16 sample slices), then cached
    rec.reads.clear()
    done = []
    res = predict_stack(model, rec, slices=[8, 9], out=out,
                        callback=lambda d, t: done.append((d, t)), options=replace(CPU, batch_size=1))
    assert res is out
    assert sorted(set(rec.reads)) == [6, 7, 8, 9, 10, 11]
    np.testing.assert_allclose(out[[8, 9]], full[[8, 9], 1], **F32)  # batches of 1 vs 4
    assert np.isnan(out[:8]).all() and np.isnan(out[10:]).all()
    assert done == [(1, 2), (2, 2)]
    four = np.zeros((12, 2, 64, 64), np.float32)
    predict_stack(model, img, slices=[0], out=four, options=CPU)
    np.testing.assert_allclose(four[0], full[0], **F32)  # a batch of 1 vs 4
    with pytest.raises(ConfigError, match="out has shape"):
        predict_stack(model, img, out=np.zeros((12, 64, 63), np.float32), options=CPU)


def test_argument_errors(trained):
    model, img, _ = trained
    with pytest.raises(ConfigError):
        predict_stack(model, img, slices=[12], options=CPU)
    with pytest.raises(ModelError):
        predict_stack("not a model", img, options=CPU)
    with pytest.raises(ConfigError, match="InferenceOptions"):
        predict_stack(model, img, options={"device": "cpu"})


def test_inference_options():
    assert InferenceOptions() == InferenceOptions(device="auto", batch_size=None, tile=1024, overlap=64,
                                                  autocast="auto", channels_last=None, fuse=True)
    for bad, match in (
        (dict(batch_size=0), "batch_size"),
        (dict(tile=8), "tile"),
        (dict(overlap=-1), "overlap"),
        (dict(autocast="fp16"), "autocast"),
        (dict(channels_last="yes"), "channels_last"),
        (dict(fuse=None), "fuse"),
    ):
        with pytest.raises(ConfigError, match=match):
            InferenceOptions(**bad)


def test_overlap_larger_than_half_a_tile(trained):
    model, img, _ = trained
    for fn, kw in ((predict_stack, {}), (tta_proba, {}), (mc_dropout_proba, {"rng": np.random.default_rng(0)})):
        with pytest.raises(ConfigError, match="overlap"):
            fn(model, img, slices=[0], options=replace(CPU, tile=32, overlap=40), **kw)
    # embeddings do not blend tiles: any tile is fine with the default overlap
    assert encoder_embeddings(model, img, slices=[0], options=replace(CPU, tile=32)).shape[0] == 1


def test_unfused_network_gives_the_same_probabilities(trained):
    model, img, _ = trained
    fused = predict_stack(model, img, slices=[2, 7], options=CPU)
    plain = predict_stack(model, img, slices=[2, 7], options=replace(CPU, fuse=False))
    np.testing.assert_allclose(plain, fused, **F32)
    np.testing.assert_allclose(plain, _plain(model, img, [2, 7]), **F32)


def test_mc_dropout_shapes_and_determinism(trained):
    model, img, _ = trained
    for t in (1, 3):
        s = mc_dropout_proba(model, img, slices=[1, 4], n_samples=t, rng=np.random.default_rng(0), options=CPU)
        assert s.shape == (t, 2, 2, 64, 64) and s.dtype == np.float32
        np.testing.assert_allclose(s.sum(axis=2), 1.0, atol=1e-5)
    a = mc_dropout_proba(model, img, slices=[1, 4], n_samples=3, rng=np.random.default_rng(7), options=CPU)
    b = model.sample_proba(img, [1, 4], n_samples=3, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a[0] - a[1]).max() > 1e-3  # dropout is on
    # the deterministic prediction is not one of the samples, but close to their mean
    det = predict_stack(model, img, slices=[1, 4], options=CPU)
    assert np.abs(a.mean(0) - det).mean() < 0.1
    no_drop = SegModel(net=build_model(ModelConfig(**{**TINY.to_dict(), "dropout": 0.0})),
                       config=ModelConfig(**{**TINY.to_dict(), "dropout": 0.0}), norm=(0, 255))
    with pytest.raises(ModelError, match="dropout"):
        mc_dropout_proba(no_drop, img, n_samples=2, rng=np.random.default_rng(0), options=CPU)


def test_tta(trained):
    model, img, _ = trained
    p = predict_stack(model, img, slices=[3], options=CPU)
    t = tta_proba(model, img, slices=[3], options=CPU)
    assert t.shape == (4, 1, 2, 64, 64)
    # the first transform is the identity: the same single-slice batch as p, so the same kernels
    np.testing.assert_allclose(t[0], p, atol=1e-6)
    # an x-flip transform of the flipped stack is the plain prediction, flipped back
    flipped = np.ascontiguousarray(img[..., ::-1])
    tf = tta_proba(model, flipped, slices=[3], transforms=[TTATransform(flip_x=True)], options=CPU)
    np.testing.assert_allclose(tf[0], p[..., ::-1], atol=1e-5)
    # odd widths too (padding happens after the flip)
    odd = np.ascontiguousarray(img[:, :, :61])
    po = predict_stack(model, odd, slices=[3], options=CPU)
    to = tta_proba(model, np.ascontiguousarray(odd[..., ::-1]), slices=[3],
                   transforms=[TTATransform(flip_x=True)], options=CPU)
    np.testing.assert_allclose(to[0], po[..., ::-1], atol=1e-5)


def test_encoder_embeddings_separate_structures(trained):
    model, _, _ = trained
    rng = np.random.default_rng(3)

    def group(sigma, n):
        return [
            ((ndimage.gaussian_filter(rng.random((64, 64)), sigma) > 0.5) * 120 + 60 + rng.normal(0, 10, (64, 64)))
            .clip(0, 255).astype(np.uint8)
            for _ in range(n)
        ]

    stack = np.stack(group(1.0, 6) + group(5.0, 6))  # fine pores in 0..5, coarse in 6..11
    ids = [0, 1, 2, 3, 8, 9, 10, 11]  # slices whose whole context is one structure
    e = encoder_embeddings(model, stack, slices=ids, options=CPU)
    assert e.shape == (8, 128) and e.dtype == np.float32
    g = np.array([0] * 4 + [1] * 4)
    ratios = []  # distance to the other structure's centroid / to its own (leave-one-out)
    for i in range(8):
        own = e[[j for j in range(8) if g[j] == g[i] and j != i]].mean(0)
        other = e[g != g[i]].mean(0)
        ratios.append(np.linalg.norm(e[i] - other) / np.linalg.norm(e[i] - own))
    ratios = np.asarray(ratios)
    assert ratios.mean() > 1.3 and (ratios > 1).sum() >= 6, ratios  # a 20-step network: most, not all
    # tiling a slice into pieces changes the embedding only a little
    et = encoder_embeddings(model, stack, slices=ids, options=replace(CPU, tile=32))
    assert et.shape == e.shape
    assert np.linalg.norm(et - e) < np.linalg.norm(e)


def test_prepared_network_cache_follows_weight_changes():
    model = SegModel(net=build_model(TINY).eval(), config=TINY, norm=(0.0, 255.0), device="cpu")
    img = np.random.default_rng(1).integers(0, 256, (4, 32, 32), dtype=np.uint8)
    a = predict_stack(model, img, options=CPU)
    np.testing.assert_array_equal(predict_stack(model, img, options=CPU), a)  # cached copy reused
    with torch.no_grad():
        list(model.net.parameters())[-1][1] += 0.5  # in-place change of the pore bias
    b = predict_stack(model, img, options=CPU)
    assert np.abs(b - a).max() > 1e-3
    np.testing.assert_allclose(b, _plain(model, img, range(4)), **F32)  # folded BN vs not
    model.net = build_model(TINY).eval()  # replaced network
    np.testing.assert_allclose(predict_stack(model, img, options=CPU), _plain(model, img, range(4)), **F32)
