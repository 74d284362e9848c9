"""Tests of activeseg.io axis handling: ImageJ 'channels' that are z, and ``axes="ZYX"``."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest
import tifffile

from activeseg import io
from activeseg.errors import ConfigError, StackError


@pytest.fixture
def log(caplog, monkeypatch):
    """caplog for the activeseg loggers, also when a CLI test turned propagation off."""
    monkeypatch.setattr(logging.getLogger("activeseg"), "propagate", True)
    caplog.set_level(logging.WARNING, logger="activeseg")
    return caplog


def _distinct(n, shape=(6, 5), dtype=np.uint16):
    """n slices, each different from the others (slice k starts at k * 1000)."""
    per = int(np.prod(shape))
    return np.stack([k * 1000 + np.arange(per).reshape(shape) for k in range(n)]).astype(dtype)


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_imagej_channels_read_as_z_with_warning(tmp_path, log, compression):
    vol = _distinct(7)
    path = tmp_path / "noaxes.tif"
    tifffile.imwrite(path, vol, imagej=True, compression=compression)  # no axes metadata
    with tifffile.TiffFile(path) as tif:
        assert tif.series[0].axes == "CYX"  # what tifffile makes of it: 7 channels
    with io.open_stack(path) as st:
        assert st.shape == (7, 6, 5)
        assert st.memmapped == (compression is None)
        for k in range(7):
            np.testing.assert_array_equal(st[k], vol[k])
        np.testing.assert_array_equal(st[::-2], vol[::-2])
    (msg,) = _warnings(log)
    for words in ("noaxes.tif", "7 channels", "7 z-slices", "--axes ZYX", "axes='ZYX'"):
        assert words in msg


def test_imagej_with_zyx_metadata_and_plain_tiff_no_warning(tmp_path, log):
    vol = _distinct(7)
    tifffile.imwrite(tmp_path / "zyx.tif", vol, imagej=True, metadata={"axes": "ZYX"})
    tifffile.imwrite(tmp_path / "plain.tif", vol)  # shaped TIFF, axes QYX
    for name in ("zyx.tif", "plain.tif"):
        np.testing.assert_array_equal(io.read_stack(tmp_path / name), vol)
    assert _warnings(log) == []


@pytest.mark.parametrize("n", [2, 3, 4])
def test_few_channels_refused_with_axes_hint(tmp_path, n):
    path = tmp_path / "c.tif"
    tifffile.imwrite(path, _distinct(n), imagej=True)
    with pytest.raises(StackError, match=rf"{n} channels.*multichannel.*Split Channels.*--axes ZYX"):
        io.open_stack(path)


def test_channels_and_slices_refused_without_axes_hint(tmp_path):
    path = tmp_path / "zc.tif"
    tifffile.imwrite(path, np.zeros((5, 6, 8, 8), np.uint8), imagej=True, metadata={"axes": "ZCYX"})
    with pytest.raises(StackError, match="multichannel") as info:
        io.open_stack(path)  # 6 channels but also 5 slices: not a z-stack in disguise
    assert "--axes" not in str(info.value)
    with pytest.raises(StackError, match=r"2 axes besides Y and X \(Z=5, C=6.*axes='ZYX'"):
        io.open_stack(path, axes="ZYX")


@pytest.mark.parametrize("n", [2, 3, 7])
@pytest.mark.parametrize("compression", [None, "zlib"])
def test_axes_zyx_reads_channels_as_z_silently(tmp_path, log, n, compression):
    vol = _distinct(n)
    path = tmp_path / "c.tif"
    tifffile.imwrite(path, vol, imagej=True, compression=compression)
    with io.open_stack(path, axes="ZYX") as st:
        assert st.shape == (n, 6, 5) and st.axes_override == "ZYX"
        for k in range(n):
            np.testing.assert_array_equal(st[k], vol[k])
    np.testing.assert_array_equal(io.read_stack(path, axes="zyx"), vol)  # read_stack forwards it
    assert _warnings(log) == []


def test_axes_zyx_on_other_axis_names(tmp_path):
    vol = _distinct(5)
    for axes in ("TYX", "IYX", "QYX", "ZYX"):
        path = tmp_path / f"{axes}.tif"
        tifffile.imwrite(path, vol, metadata={"axes": axes}, photometric="minisblack")
        np.testing.assert_array_equal(io.read_stack(path, axes="ZYX"), vol)


@pytest.mark.parametrize("bad", ["XYZ", "ZXY", "CYX", "", 3, ("Z", "Y", "X")])
def test_axes_other_values_refused(tmp_path, bad):
    path = tmp_path / "v.tif"
    tifffile.imwrite(path, _distinct(3), imagej=True)
    with pytest.raises(ConfigError, match=r"axes must be None .* or 'ZYX'"):
        io.open_stack(path, axes=bad)
    folder = tmp_path / "slices"
    folder.mkdir()
    for k, sl in enumerate(_distinct(3)):
        tifffile.imwrite(folder / f"s{k}.tif", sl)
    with pytest.raises(ConfigError, match="'ZYX'"):
        io.open_stack(folder, axes=bad)


def test_axes_folder_of_slices_accepts_zyx(tmp_path):
    vol = _distinct(4)
    folder = tmp_path / "slices"
    folder.mkdir()
    for k, sl in enumerate(vol):
        tifffile.imwrite(folder / f"s{k}.tif", sl)
    for axes in (None, "ZYX"):
        with io.open_stack(folder, axes=axes) as st:
            assert st.format == "folder" and st.axes_override == axes
            np.testing.assert_array_equal(st[:], vol)


def test_axes_survive_pickling(tmp_path, log):
    vol = _distinct(3)
    path = tmp_path / "c3.tif"
    tifffile.imwrite(path, vol, imagej=True)
    with io.open_stack(path, axes="ZYX", crop="1:3,:,:") as st:
        clone = pickle.loads(pickle.dumps(st))  # what a spawned DataLoader worker does
    with clone:
        assert clone.axes_override == "ZYX" and clone.shape == (2, 6, 5)
        np.testing.assert_array_equal(clone[:], vol[1:3])
    # a file whose channels were read as z automatically reopens without warning again
    path7 = tmp_path / "c7.tif"
    vol7 = _distinct(7)
    tifffile.imwrite(path7, vol7, imagej=True)
    st7 = io.open_stack(path7)
    assert st7.axes_override is None
    assert len(_warnings(log)) == 1
    clone7 = pickle.loads(pickle.dumps(st7))
    np.testing.assert_array_equal(clone7[:], vol7)
    assert len(_warnings(log)) == 1
    st7.close()
    clone7.close()


def test_yx_not_last_refused(tmp_path):
    # a shaped TIFF whose metadata put z after y and x: reading it as (Z, Y, X) would scramble it
    path = tmp_path / "yxz.tif"
    tifffile.imwrite(path, _distinct(4, shape=(5, 7)), metadata={"axes": "YXZ"}, photometric="minisblack")
    with pytest.raises(StackError, match=r"axis order YXZ.*\(Z, Y, X\)"):
        io.open_stack(path)
    with pytest.raises(StackError, match=r"axis order YXZ"):
        io.open_stack(path, axes="ZYX")
