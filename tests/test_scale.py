"""Whole-stack work in z-blocks: the same answers inline and on Dask workers (``--scheduler``).

One small Dask cluster (2 worker processes, 1 thread each) serves the module through its
``tcp://`` address, exactly as a user's cluster would; one CLI test starts its own
``local:2`` cluster.
"""

import json

import numpy as np
import pytest

from activeseg import io, synth
from activeseg.bootstrap import fit_rf
from activeseg.cluster import parse_scheduler
from activeseg.errors import ConfigError
from activeseg.loop.blocks import block_size, finish_block, model_from_payload, model_payload, plan_blocks, predict_blocks
from tests.cli_run import fails, ok

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cluster():
    """The address of a running 2-worker Dask cluster (one thread per worker)."""
    from distributed import LocalCluster

    c = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    yield c.scheduler_address
    c.close()


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    d = tmp_path_factory.mktemp("scale")
    v = synth.synthesize(shape=(10, 40, 48), seed=3)
    io.write_stack(d / "image.tif", v.image, voxel_size=(20, 10, 10))
    lab = np.full(v.truth.shape, 255, np.uint8)
    lab[[2, 7]] = v.truth[[2, 7]]
    return {"dir": d, "vol": v, "labels": lab, "image": d / "image.tif"}


@pytest.fixture(scope="module")
def rf(volume):
    with io.open_stack(volume["image"]) as img:
        return fit_rf(img, volume["labels"], rng=np.random.default_rng(0), n_estimators=6, max_depth=8)


def _network(seed: int = 0):
    import torch

    from activeseg.model import ModelConfig, build_model
    from activeseg.network import SegModel

    torch.manual_seed(seed)
    cfg = ModelConfig(encoder_depth=3, decoder_channels=(16, 8, 4))
    return SegModel(net=build_model(cfg).eval(), config=cfg, norm=(0.0, 255.0))


def test_parse_scheduler():
    assert parse_scheduler(None).inline and parse_scheduler("inline").inline
    assert (parse_scheduler("local:3").kind, parse_scheduler("local:3").workers) == ("local", 3)
    assert parse_scheduler("tcp://10.0.0.5:8786").address == "tcp://10.0.0.5:8786"
    for bad in ("local:0", "local", "threads", "http://x:1", "local:-2"):
        with pytest.raises(ConfigError, match="--scheduler"):
            parse_scheduler(bad)


def test_blocks_cover_the_stack_and_respect_the_memory_bound():
    assert plan_blocks(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert plan_blocks(3, 16) == [(0, 3)]
    assert block_size((100, 64, 64), 2) == 16
    # 2 classes x 4096 x 4096 float32 = 128 MiB a slice: two slices per 256 MiB block
    assert block_size((100, 4096, 4096), 2) == 2
    assert block_size((100, 20000, 20000), 3) == 1


def test_finish_block_labels_fixed_slices_and_fractions():
    probs = np.zeros((2, 2, 4, 4), np.float32)
    probs[:, 1] = 0.7
    probs[:, 0] = 0.3
    probs[1, 1, :2] = 0.2
    probs[1, 0, :2] = 0.8
    fixed = {5: np.zeros((4, 4), np.uint8)}  # slice 5 (the block's first) is labelled all solid
    lab, fr = finish_block(probs.copy(), 5, mode="labels", n_classes=2, values=[0, 255], fixed=fixed)
    assert lab.dtype == np.uint8 and np.all(lab[0] == 0)
    assert np.all(lab[1, :2] == 0) and np.all(lab[1, 2:] == 255)
    np.testing.assert_allclose(fr, [[1.0, 0.0], [0.5, 0.5]])
    p, _ = finish_block(probs.copy(), 5, mode="probabilities", n_classes=2, fixed=fixed)
    assert p.shape == (2, 4, 4) and np.all(p[0] == 0) and np.isclose(p[1, 3, 3], 0.7)
    raw, _ = finish_block(probs.copy(), 5, mode="raw", n_classes=2, fixed=fixed)
    assert np.isclose(raw[0, 0, 0], 0.7)  # raw predictions ignore the labels


def test_rf_probabilities_do_not_depend_on_threads_or_blocks(volume, rf):
    with io.open_stack(volume["image"]) as img:
        rf.n_jobs = 1
        one = rf.predict_proba(img, range(10))
        rf.n_jobs = 2
        two = rf.predict_proba(img, range(10))
        out = np.zeros((10, 40, 48), np.float32)
        predict_blocks(rf, img, out, block=3)
    assert np.array_equal(one, two)
    assert np.array_equal(out, one[:, 1])


def test_models_travel_as_bytes(rf):
    pay = model_payload(rf)
    assert pay["kind"] == "rf" and set(pay["files"]) == {"rf.npz"}
    back = model_from_payload(pay)
    assert back.n_classes == rf.n_classes and model_payload(back)["digest"] == pay["digest"]
    net = _network()
    pay = model_payload(net)
    assert pay["kind"] == "network" and set(pay["files"]) == {"model.json", "model.safetensors"}
    assert not any(name.endswith((".pkl", ".pt", ".pickle")) for name in pay["files"])


def test_rf_inline_and_cluster_bit_identical(volume, rf, cluster):
    with io.open_stack(volume["image"]) as img:
        a = np.zeros((10, 40, 48), np.float32)
        b = np.zeros_like(a)
        fa = predict_blocks(rf, img, a, block=3)
        fb = predict_blocks(rf, img, b, block=4, scheduler=cluster)
    assert np.array_equal(a, b) and np.array_equal(fa, fb)


def test_network_inline_and_cluster_agree(volume, cluster):
    net = _network()
    with io.open_stack(volume["image"]) as img:
        a = np.zeros((10, 2, 40, 48), np.float32)
        b = np.zeros_like(a)
        predict_blocks(net, img, a, block=5)
        predict_blocks(net, img, b, block=3, scheduler=cluster)
    assert np.abs(a - b).max() <= 1e-5
    assert np.all(a.sum(axis=1) > 0.99)


def test_zarr_output_written_by_the_workers(volume, rf, cluster, tmp_path):
    with io.open_stack(volume["image"]) as img:
        ref = np.zeros((10, 40, 48), np.uint8)
        predict_blocks(rf, img, ref, mode="labels", values=[0, 255], block=3)
        writer = io.create_output(tmp_path / "seg.zarr", (10, 40, 48), np.uint8, voxel_size=(20, 10, 10), kind="labels")
        predict_blocks(rf, img, writer.array, mode="labels", values=[0, 255], block=3, scheduler=cluster,
                       worker_target=writer.worker_target)
        writer.commit()
    with io.open_stack(tmp_path / "seg.zarr") as seg:
        assert np.array_equal(seg[:], ref)
        assert seg.voxel_size == (20.0, 10.0, 10.0)


@pytest.fixture(scope="module")
def session(volume, tiny_config, tmp_path_factory):
    d = tmp_path_factory.mktemp("scale_session")
    v = volume["vol"]
    io.write_stack(volume["dir"] / "truth.tif", v.truth, kind="labels")
    s = d / "s"
    ok(["init", s, "--image", volume["image"], "--truth", volume["dir"] / "truth.tif",
        "--config", tiny_config(d / "cfg.toml"), "--seed", 1])
    ok(["bootstrap", s, "--slices", "2,7"])
    return s


def test_export_local_cluster_equals_inline(session, tmp_path):
    ok(["export", session, tmp_path / "inline.tif"])
    ok(["export", session, tmp_path / "dist.zarr", "--scheduler", "local:2"])
    with io.open_stack(tmp_path / "inline.tif") as a, io.open_stack(tmp_path / "dist.zarr") as b:
        assert np.array_equal(a[:], b[:])
    # the porosity tables agree too
    assert (tmp_path / "inline.porosity.csv").read_text() == (tmp_path / "dist.porosity.csv").read_text()


def test_query_scores_on_a_cluster_pick_the_same_slices(session, cluster, tmp_path):
    import shutil

    other = tmp_path / "copy"
    shutil.copytree(session, other)
    ok(["query", session, "-n", 2, "--strategy", "entropy"])
    ok(["query", other, "-n", 2, "--strategy", "entropy", "--scheduler", cluster])
    rounds = [json.loads((p / "activeseg.json").read_text())["rounds"][-1]["queried"] for p in (session, other)]
    assert rounds[0] == rounds[1]
    a = np.load(next((session / "scores").glob("*.npz")))
    b = np.load(next((other / "scores").glob("*.npz")))
    np.testing.assert_array_equal(a["entropy"], b["entropy"])


def test_bad_scheduler_fails_before_any_work(session, tmp_path):
    out = fails(["export", session, tmp_path / "x.tif", "--scheduler", "local:zero"])
    assert "--scheduler" in out
    assert not (tmp_path / "x.tif").exists()
    out = fails(["export", session, tmp_path / "x.png"])
    assert ".zarr" in out


def test_a_store_output_never_swallows_an_input(volume, tmp_path):
    from activeseg.errors import OutputError
    from activeseg.safety import check_output

    store = tmp_path / "scan.zarr"
    writer = io.create_output(store, (4, 40, 48), np.uint8, voxel_size=None, kind="image")
    writer.array[:] = 7
    writer.commit()
    inner = store / "0"
    with pytest.raises(OutputError, match="holds the stack"):
        check_output(store, inputs=[("stack", str(inner))])
    with pytest.raises(OutputError, match="holds the session"):
        check_output(tmp_path / "all.zarr", inputs=[], sessions=[tmp_path / "all.zarr" / "s"])


def test_random_strategy_picks_the_same_slices_inline_and_on_a_cluster(session, cluster, tmp_path):
    """Scoring on a cluster draws nothing from the session's generator unless a scorer samples."""
    import shutil

    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(session, a)
    shutil.copytree(session, b)
    ok(["query", a, "-n", 3, "--strategy", "random", "--audit"])
    ok(["query", b, "-n", 3, "--strategy", "random", "--audit", "--scheduler", cluster])
    ra, rb = (json.loads((p / "activeseg.json").read_text())["rounds"][-1] for p in (a, b))
    assert ra["queried"] == rb["queried"] and ra["audit"] == rb["audit"]


@pytest.mark.gpu
def test_gpu_bf16_labels_agree_with_the_cpu(volume):
    """A trained network's labels on a CUDA device (bf16 autocast) agree with fp32 on the CPU
    on at least 99.9 % of the voxels (skipped without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from activeseg.infer import InferenceOptions, predict_stack
    from activeseg.train import TrainConfig, train_model

    with io.open_stack(volume["image"]) as img:
        cfg = TrainConfig(steps=60, patch_size=32, batch_size=4, eval_every=30, device="cuda")
        net, _ = train_model(img, volume["labels"], config=cfg, rng=np.random.default_rng(0),
                             model_config=_network().config)
        gpu = predict_stack(net, img, options=InferenceOptions(device="cuda"))
        cpu = predict_stack(net, img, options=InferenceOptions(device="cpu"))
    agree = np.mean(np.argmax(gpu, axis=1) == np.argmax(cpu, axis=1))
    assert agree >= 0.999, agree
