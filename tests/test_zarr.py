"""OME-Zarr and zarr stores: reading stacks and labels, writing outputs, session fingerprints."""

import json
import logging
import os
import pickle
import shutil

import numpy as np
import pytest
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader
from ome_zarr.writer import write_image

from activeseg import io
from activeseg.errors import ConfigError, OutputError, StackError
from activeseg.io.errors import Single2DError
from tests.cli_run import fails, ok

SHAPE = (6, 40, 48)
VS = (20.0, 5.0, 4.0)


def _image(seed=0, dtype=np.uint16):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 4000 if dtype == np.uint16 else 250, SHAPE).astype(dtype)


def _write(path, data, kind="image", voxel_size=VS):
    with io.create_output(path, data.shape, data.dtype, voxel_size=voxel_size, kind=kind) as w:
        for z in range(data.shape[0]):
            w.array[z] = data[z]
    return path


def _ome_node(path):
    nodes = list(Reader(parse_url(str(path)))())
    return nodes[0]


def test_ome_zarr_round_trip_read_by_activeseg_and_ome_zarr(tmp_path):
    img = _image()
    out = _write(tmp_path / "seg.ome.zarr", img)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.ome.zarr"]
    with io.open_stack(out) as st:
        assert st.format == "ome-zarr" and st.shape == SHAPE and st.dtype == np.uint16
        assert st.voxel_size == VS and st.voxel_size_source == ("ome-zarr",) * 3
        np.testing.assert_array_equal(st[:], img)
        np.testing.assert_array_equal(st[2:5, ::-3, 7:40:4], img[2:5, ::-3, 7:40:4])
        again = pickle.loads(pickle.dumps(st))  # Dask workers receive pickled stacks: they reopen them
        np.testing.assert_array_equal(again[4], img[4])
        again.close()
    node = _ome_node(out)  # ome-zarr's own reader
    assert node.metadata["coordinateTransformations"][0][0] == {"type": "scale", "scale": list(VS)}
    assert [a.get("unit") for a in node.metadata["axes"]] == ["nanometer"] * 3
    assert [a["name"] for a in node.metadata["axes"]] == ["z", "y", "x"]
    assert [tuple(d.shape) for d in node.data] == [SHAPE, (6, 20, 24), (6, 10, 12)]
    np.testing.assert_array_equal(np.asarray(node.data[0]), img)
    mean = img[:, :2, :2].astype(np.float64).mean(axis=(1, 2))  # level 1 is the 2 x 2 mean
    np.testing.assert_array_equal(np.asarray(node.data[1])[:, 0, 0], np.rint(mean).astype(np.uint16))
    assert zarr.open_array(str(out), path="0", mode="r").chunks == (1, 40, 48)  # one slice per chunk


def test_napari_builtin_reader_opens_the_pyramid(tmp_path):
    npe2 = pytest.importorskip("npe2")
    pytest.importorskip("napari")
    img = _image(1, np.uint8)
    out = _write(tmp_path / "img.zarr", img)
    npe2.PluginManager.instance().discover()
    layers = npe2.read([str(out)], stack=False, plugin_name="napari")
    data = layers[0][0]
    assert [tuple(a.shape) for a in data] == [SHAPE, (6, 20, 24), (6, 10, 12)]
    np.testing.assert_array_equal(np.asarray(data[0]), img)


def test_napari_ome_zarr_reads_the_voxel_size(tmp_path):
    plugin = pytest.importorskip("napari_ome_zarr", reason="napari-ome-zarr is not installed: napari's own reader "
                                 "of NGFF scales cannot be checked here (the builtin reader ignores scales)")
    out = _write(tmp_path / "img.zarr", _image(2, np.uint8))
    reader = plugin.napari_get_reader(str(out))
    layer = reader(str(out))[0]
    assert list(layer[1]["scale"])[-3:] == list(VS)


def test_probabilities_and_labels(tmp_path):
    rng = np.random.default_rng(3)
    prob = rng.random((5, 3, 33, 31)).astype(np.float32)
    out = tmp_path / "prob.zarr"
    with io.create_output(out, prob.shape, np.float32, voxel_size=VS, kind="probabilities") as w:
        w.array[0:3] = prob[0:3]
        w.array[3] = prob[3]
        w.array[4] = prob[4]
    node = _ome_node(out)
    assert [a["name"] for a in node.metadata["axes"]] == ["c", "z", "y", "x"]  # NGFF: channel before space
    assert node.metadata["coordinateTransformations"][0][0]["scale"] == [1.0, *VS]
    np.testing.assert_allclose(np.asarray(node.data[0]), prob.swapaxes(0, 1))
    with pytest.raises(StackError, match="3 channels.*multichannel.*axis=0"):
        io.open_stack(out)

    lab = (rng.random(SHAPE) > 0.5).astype(np.uint8)
    lab[0, 0, :] = 255
    lout = _write(tmp_path / "lab.zarr", lab, kind="labels", voxel_size=None)
    level1 = zarr.open_array(str(lout), path="1", mode="r")[:]
    np.testing.assert_array_equal(level1, lab[:, ::2, ::2])  # labels: nearest, never a blend
    with io.open_stack(lout) as st:
        assert st.voxel_size is None  # written without a voxel size: no unit
    found = io.read_labels(lout, shape=SHAPE, n_classes=2, kind="partial")
    np.testing.assert_array_equal(found[2], lab[2])


def test_stores_written_by_other_tools(tmp_path, caplog):
    img = _image(4)
    v2 = zarr.create_array(str(tmp_path / "v2.zarr"), shape=SHAPE, dtype=">u2", chunks=(2, 16, 16), zarr_format=2)
    v2[:] = img
    v3 = zarr.create_array(str(tmp_path / "v3"), shape=SHAPE, dtype="float64", chunks=(1, 40, 48), zarr_format=3)
    v3[:] = img / 7.0
    grp = zarr.open_group(str(tmp_path / "grp.zarr"), mode="w")
    grp.create_array("raw", shape=SHAPE, dtype="uint8")[:] = img.astype(np.uint8)
    for path, want, dtype in ((tmp_path / "v2.zarr", img, np.uint16), (tmp_path / "v3", img / 7.0, np.float32),
                              (tmp_path / "grp.zarr", img.astype(np.uint8), np.uint8)):
        with io.open_stack(path) as st:
            assert st.format == "zarr" and st.voxel_size is None and st.dtype == dtype
            np.testing.assert_allclose(st[:], want.astype(dtype))

    um = tmp_path / "um.zarr"
    write_image(img, zarr.open_group(str(um), mode="w"), axes="zyx", scale={"z": 0.02, "y": 0.005, "x": 0.004},
                axes_units={a: "micrometer" for a in "zyx"}, scale_factors=[2])
    with io.open_stack(um) as st:
        assert st.voxel_size == pytest.approx(VS)
    v04 = tmp_path / "v04.zarr"  # NGFF 0.4 on zarr v2, angstrom
    write_image(img, zarr.open_group(str(v04), mode="w", zarr_format=2), axes="zyx", scale_factors=[2],
                scale={"z": 200.0, "y": 50.0, "x": 40.0}, axes_units={a: "angstrom" for a in "zyx"})
    with io.open_stack(v04) as st:
        assert st.voxel_size == pytest.approx(VS)
    meta = json.loads((v04 / ".zattrs").read_text())
    for a in meta["multiscales"][0]["axes"]:
        a["unit"] = "parsec"
    (v04 / ".zattrs").write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="activeseg"):
        with io.open_stack(v04) as st:
            assert st.voxel_size is None
    assert "'parsec'" in caplog.text

    labels_container = tmp_path / "img.zarr"  # an OME-Zarr image's labels/ group with one label image
    root = zarr.open_group(str(labels_container), mode="w")
    write_image(img, root, axes="zyx", scale_factors=[2])
    write_image((img > 2000).astype(np.uint8), root.require_group("labels").require_group("pores"), axes="zyx",
                scale_factors=[2])
    from ome_zarr.writer import write_label_metadata

    write_label_metadata(root["labels"], "pores")
    for where in (labels_container / "labels", labels_container / "labels" / "pores"):
        with io.open_stack(where) as st:
            np.testing.assert_array_equal(st[1], (img[1] > 2000).astype(np.uint8))


def test_remote_url_through_fsspec(tmp_path):
    img = _image(5, np.uint8)
    out = _write(tmp_path / "r.zarr", img)
    url = f"file://{out}"
    with io.open_stack(url) as st:
        assert st.location == url and st.voxel_size == VS
        np.testing.assert_array_equal(st[3], img[3])
        np.testing.assert_array_equal(pickle.loads(pickle.dumps(st))[1], img[1])


def test_refusals(tmp_path):
    rng = np.random.default_rng(6)
    czyx = tmp_path / "two_channels.zarr"
    write_image(rng.integers(0, 9, (2, *SHAPE)).astype(np.uint8), zarr.open_group(str(czyx), mode="w"),
                axes="czyx", scale_factors=[2])
    with pytest.raises(StackError, match="2 channels.*pick|2 channels.*save the one you want"):
        io.open_stack(czyx)
    flat = zarr.create_array(str(tmp_path / "flat.zarr"), shape=(40, 48), dtype="uint8")
    flat[:] = 1
    with pytest.raises(Single2DError, match="single 2D image"):
        io.open_stack(tmp_path / "flat.zarr")
    two = zarr.open_group(str(tmp_path / "two.zarr"), mode="w")
    two.create_array("a", shape=SHAPE, dtype="uint8")
    two.create_array("b", shape=SHAPE, dtype="uint8")
    with pytest.raises(StackError, match="2 arrays .*two.zarr/a"):
        io.open_stack(tmp_path / "two.zarr")
    with pytest.raises(OutputError, match=r"\.tif.*\.zarr"):
        io.create_output(tmp_path / "seg.h5", SHAPE, np.uint8, voxel_size=None, kind="labels")
    slices = tmp_path / "slices.zarr"  # a folder of TIFF slices that happens to end in .zarr
    slices.mkdir()
    io.write_stack(slices / "z0000.tif", np.zeros((1, 8, 8), np.uint8))
    with pytest.raises(OutputError, match="not an OME-Zarr store"):
        io.create_output(slices, SHAPE, np.uint8, voxel_size=None, kind="labels")
    assert (slices / "z0000.tif").exists()
    with pytest.raises(ConfigError, match="chunks"):
        io.create_output(tmp_path / "c.zarr", SHAPE, np.uint8, voxel_size=None, kind="labels", chunks=(1, 8))
    assert not (tmp_path / "c.zarr.partial").exists()


def test_half_written_store_is_never_the_output(tmp_path):
    img = _image(7, np.uint8)
    target = tmp_path / "out.zarr"
    w = io.create_output(target, SHAPE, np.uint8, voxel_size=VS, kind="image")
    w.array[0:3] = img[0:3]  # a killed writer stops here: no commit
    assert not target.exists() and (tmp_path / "out.zarr.partial").is_dir()
    with pytest.raises(StackError, match="no such file"):
        io.open_stack(target)
    del w
    old = _write(target, img[::-1].copy())  # the next writer removes the leftover and finishes
    assert not (tmp_path / "out.zarr.partial").exists()
    np.testing.assert_array_equal(io.read_stack(old), img[::-1])

    # a worker writes its own z-range through the JSON target; the old store is replaced only at commit
    w = io.create_output(target, SHAPE, np.uint8, voxel_size=VS, kind="image")
    target_json = json.loads(json.dumps(w.worker_target))
    block = io.open_output_block(target_json)
    block[0:3] = img[0:3]
    w.array[3:] = img[3:]
    np.testing.assert_array_equal(io.read_stack(target), img[::-1])  # still the previous output
    w.commit()
    np.testing.assert_array_equal(io.read_stack(target), img)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]
    with pytest.raises(OutputError, match="not an unfinished store"):
        io.open_output_block(target_json)

    w = io.create_output(tmp_path / "gone.zarr", SHAPE, np.uint8, voxel_size=None, kind="labels")
    w.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]


def test_tiff_output_appears_only_on_commit(tmp_path):
    img = _image(8, np.uint8)
    target = tmp_path / "seg.tif"
    w = io.create_output(target, SHAPE, np.uint8, voxel_size=VS, kind="labels")
    assert w.worker_target is None and not target.exists()
    w.array[:] = img
    w.commit()
    assert [p.name for p in tmp_path.iterdir()] == ["seg.tif"]
    with io.open_stack(target) as st:
        assert st.voxel_size == pytest.approx(VS)
        np.testing.assert_array_equal(st[:], img)
    with pytest.raises(ValueError):
        with io.create_output(tmp_path / "bad.tif", SHAPE, np.uint8, voxel_size=None, kind="labels") as w:
            raise ValueError("writer failed")
    assert [p.name for p in tmp_path.iterdir()] == ["seg.tif"]


def _volume():
    """A tiny z-stack with structure (pores drift slowly through z) and its truth."""
    rng = np.random.default_rng(9)
    yy, xx = np.mgrid[0:SHAPE[1], 0:SHAPE[2]]
    truth = np.stack([((np.sin(yy / 5.0 + z * 0.2) + np.cos(xx / 6.0)) > 0.3) for z in range(SHAPE[0])]).astype(np.uint8)
    img = (60 + 120 * (1 - truth) + rng.normal(0, 8, SHAPE)).clip(0, 255).astype(np.uint8)
    return img, truth


def test_cli_session_on_zarr_and_fingerprints(tmp_path, tiny_config):
    img, truth = _volume()
    stack = _write(tmp_path / "img.zarr", img)
    truth_path = _write(tmp_path / "truth.zarr", truth, kind="labels")
    cfg = tiny_config(tmp_path / "tiny.toml")
    copy = tmp_path / "copy.zarr"
    shutil.copytree(stack, copy)
    (stack / ".DS_Store").write_bytes(b"x")  # not a chunk: does not count

    out = ok(["info", stack, "--labels", truth_path, "--json"])
    info = json.loads(out)
    assert info["format"] == "ome-zarr" and info["voxel_size_nm"] == list(VS) and info["labels"]["labelled_slices"] == 6

    s = tmp_path / "s"
    ok(["init", s, "--image", stack, "--truth", truth_path, "--config", cfg])
    m = json.loads((s / "activeseg.json").read_text())
    assert m["stack"]["sha256"] is None and len(m["stack"]["listing"]) == 64 and m["truth"]["listing"]
    assert m["config"]["geometry"]["voxel_size"] == list(VS)
    ok(["bootstrap", s, "--slices", "1,4"])

    arr = zarr.open_array(str(stack), path="0", mode="r+")  # rewrite one chunk with other bytes
    arr[2] = 255 - img[2]
    out = fails(["query", s, "-n", "1"])
    assert "image stack" in out and "changed on disk" in out and "--relink" in out
    ok(["query", s, "-n", "1", "--relink", copy])  # an identical copy: same shape and dtype
    assert json.loads((s / "activeseg.json").read_text())["stack"]["path"] == str(copy.resolve())

    v = tmp_path / "v"
    ok(["init", v, "--image", copy, "--truth", truth_path, "--config", cfg, "--verify"])
    entry = json.loads((v / "activeseg.json").read_text())["stack"]
    assert len(entry["sha256"]) == 64
    chunk = next(p for p in sorted(copy.rglob("*")) if p.is_file() and p.name.isdigit())
    st = chunk.stat()
    os.utime(chunk, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, same bytes: the hash says unchanged
    ok(["bootstrap", v, "--slices", "2"])
    refreshed = json.loads((v / "activeseg.json").read_text())["stack"]
    assert refreshed["sha256"] == entry["sha256"] and refreshed["listing"] != entry["listing"]
    chunk.write_bytes(chunk.read_bytes()[:-1] + bytes([chunk.read_bytes()[-1] ^ 1]))
    assert "changed on disk" in fails(["query", v, "-n", "1"])
