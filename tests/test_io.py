"""Tests of activeseg.io: stacks, metadata, bad inputs, writers and label conventions."""

from __future__ import annotations

import copy
import errno
import logging
import os

import numpy as np
import pytest
import tifffile
from PIL import Image

from activeseg import io, safety
from activeseg.errors import ActiveSegError, ConfigError, LabelError, OutputError, StackError

# ----------------------------------------------------------------------------- helpers


def _volume(dtype, shape=(8, 16, 12), seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.random(shape, dtype=np.float32).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(0, info.max, size=shape, endpoint=True).astype(dtype)


def _write_slices(folder, vol, names, fmt="tif"):
    folder.mkdir(parents=True, exist_ok=True)
    for arr, name in zip(vol, names):
        if fmt == "png":
            Image.fromarray(arr).save(folder / f"{name}.png")
        else:
            tifffile.imwrite(folder / f"{name}.tif", arr)
    return folder


FEI_INI = (
    "[User]\r\nDate=01/02/2024\r\n"
    "[Scan]\r\nPixelWidth=4.5e-009\r\nPixelHeight=4.5e-009\r\n"
    "[Image]\r\nResolutionX={w}\r\nResolutionY={h}\r\n"
    "[PrivateFei]\r\nDatabarHeight={bar}\r\n"
)


def _fei_tag(h, w, bar):
    return [(34682, "s", 0, FEI_INI.format(w=w, h=h, bar=bar), True)]


# ------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_write_read_round_trip_three_readers(tmp_path, dtype):
    import skimage.io

    vol = _volume(dtype)
    vs = (12.5, 3.7, 4.2)
    path = io.write_stack(tmp_path / "vol.tif", vol, voxel_size=vs)

    with io.open_stack(path) as stack:
        assert stack.shape == vol.shape and stack.dtype == vol.dtype
        assert stack.format == "imagej" and stack.memmapped
        np.testing.assert_array_equal(stack[:], vol)
        assert stack.voxel_size == pytest.approx(vs, rel=1e-6)
        assert stack.voxel_size_source == ("imagej",) * 3
        assert stack.nbytes == vol.nbytes and stack.file_size == os.path.getsize(path)

    # tifffile sees an ImageJ stack with the same data and scale in nm
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej and tif.series[0].axes == "ZYX"
        np.testing.assert_array_equal(tif.asarray(), vol)
        assert tif.asarray().dtype == vol.dtype
        meta = tif.imagej_metadata
        assert meta["unit"] == "nm" and meta["spacing"] == pytest.approx(vs[0])
        xres = tif.pages[0].tags["XResolution"].value
        yres = tif.pages[0].tags["YResolution"].value
        assert xres[1] / xres[0] == pytest.approx(vs[2], rel=1e-6)
        assert yres[1] / yres[0] == pytest.approx(vs[1], rel=1e-6)

    # a second reader
    other = skimage.io.imread(path)
    assert other.dtype == vol.dtype
    np.testing.assert_array_equal(other, vol)


@pytest.mark.parametrize("fmt,dtype", [("png", np.uint8), ("png", np.uint16), ("tif", np.float32)])
def test_folder_of_slices_matches_pillow(tmp_path, fmt, dtype):
    vol = _volume(dtype, shape=(6, 10, 7))
    names = [f"img_{i:03d}" for i in range(vol.shape[0])]
    folder = _write_slices(tmp_path / "slices", vol, names, fmt)
    with io.open_stack(folder) as stack:
        assert stack.format == "folder" and not stack.memmapped
        assert stack.shape == vol.shape and stack.dtype == vol.dtype
        np.testing.assert_array_equal(stack[:], vol)
        files = sorted(folder.iterdir())
        assert stack.file_size == sum(f.stat().st_size for f in files)
        for z, f in enumerate(files):  # second reader, file by file
            np.testing.assert_array_equal(stack[z], np.asarray(Image.open(f)))


def test_folder_natural_sort(tmp_path):
    folder = tmp_path / "nat"
    folder.mkdir()
    order = [1, 2, 10, 11, 100]
    for i in order:
        tifffile.imwrite(folder / f"slice_{i}.tif", np.full((4, 5), i, dtype=np.uint8))
    (folder / "notes.txt").write_text("ignored")
    with io.open_stack(folder) as stack:
        assert [int(stack[z][0, 0]) for z in range(len(stack))] == order
    names = ["slice_10.tif", "slice_2.tif", "Slice_1.tif"]
    assert sorted(names, key=io.natural_sort_key) == ["Slice_1.tif", "slice_2.tif", "slice_10.tif"]


def test_folder_reads_only_requested_files(tmp_path):
    vol = _volume(np.uint8, shape=(5, 6, 6))
    folder = _write_slices(tmp_path / "f", vol, [f"s{i}" for i in range(5)])
    stack = io.open_stack(folder)
    (folder / "s3.tif").unlink()  # a read of slice 3 would fail from now on
    np.testing.assert_array_equal(stack[[0, 1, 4]], vol[[0, 1, 4]])
    with pytest.raises((StackError, OSError)):
        stack[3]


def test_big_endian_and_converted_dtypes(tmp_path):
    vol = _volume(np.uint16)
    tifffile.imwrite(tmp_path / "be.tif", vol, byteorder=">")
    with io.open_stack(tmp_path / "be.tif") as stack:
        assert stack.dtype == np.dtype(np.uint16) and stack.dtype.isnative
        np.testing.assert_array_equal(stack[:], vol)
    f64 = _volume(np.float32).astype(np.float64)
    tifffile.imwrite(tmp_path / "f64.tif", f64)
    with io.open_stack(tmp_path / "f64.tif") as stack:
        assert stack.dtype == np.float32
        np.testing.assert_allclose(stack[2], f64[2], rtol=1e-7)
    i32 = np.zeros((6, 4, 4), np.int32)
    tifffile.imwrite(tmp_path / "i32.tif", i32, photometric="minisblack")
    with pytest.raises(StackError, match=r"int32.*uint8, uint16 or float32"):
        io.open_stack(tmp_path / "i32.tif")


# ------------------------------------------------------------------ memmap / compressed


def test_memmapped_vs_compressed_identical(tmp_path):
    vol = _volume(np.uint16, shape=(9, 20, 14))
    plain = io.write_stack(tmp_path / "plain.tif", vol)
    packed = io.write_stack(tmp_path / "zlib.tif", vol, compression="zlib")
    with io.open_stack(plain) as a, io.open_stack(packed) as b:
        assert a.memmapped is True
        assert b.memmapped is False
        np.testing.assert_array_equal(a[:], b[:])
        np.testing.assert_array_equal(a[[7, 2]], b[[7, 2]])
        np.testing.assert_array_equal(b[:], vol)
    assert os.path.getsize(packed) < os.path.getsize(plain) or vol.max() > 0


def test_compressed_reads_only_requested_pages(tmp_path, monkeypatch):
    vol = _volume(np.uint8, shape=(8, 16, 16))
    path = tmp_path / "z.tif"
    tifffile.imwrite(path, vol, compression="zlib", photometric="minisblack")
    with io.open_stack(path) as stack:
        assert not stack.memmapped
        decoded = []
        for cls in (tifffile.TiffPage, tifffile.TiffFrame):
            original = cls.asarray

            def counting(self, *a, _orig=original, **k):
                decoded.append(self.index)
                return _orig(self, *a, **k)

            monkeypatch.setattr(cls, "asarray", counting)
        np.testing.assert_array_equal(stack[5], vol[5])
        assert set(decoded) == {5}
        decoded.clear()
        stack[[6, 1]]
        assert set(decoded) == {1, 6}


def test_compressed_other_pages_corrupt_still_reads_one(tmp_path):
    vol = _volume(np.uint8, shape=(6, 32, 32))
    path = tmp_path / "z.tif"
    tifffile.imwrite(path, vol, compression="zlib", photometric="minisblack")
    with tifffile.TiffFile(path) as tif:
        spans = [(p.dataoffsets[0], p.databytecounts[0]) for p in tif.pages]
    raw = bytearray(path.read_bytes())
    for z, (off, n) in enumerate(spans):
        if z != 2:
            raw[off : off + n] = b"\xff" * n  # destroy every page but slice 2
    path.write_bytes(bytes(raw))
    with io.open_stack(path) as stack:
        np.testing.assert_array_equal(stack[2], vol[2])
        with pytest.raises(StackError, match=r"slice 4.*truncated or corrupt"):
            stack[4]


# ---------------------------------------------------------------------------- indexing

KEYS = [
    3,
    -1,
    slice(None),
    slice(2, 7, 2),
    slice(None, None, -1),
    slice(6, 1, -2),
    slice(4, 4),
    [5, 1, 5],
    np.array([0, 6]),
    np.array([True, False, False, True, True, False, True]),
    (2, 5),
    (slice(1, 4), slice(3, 9), 2),
    (1, slice(None), slice(None, None, -3)),
    ([1, 2], [0, 3]),
    ([1, 2], slice(2, 6), [0, 3]),
    (Ellipsis, 4),
    (slice(0, 3), Ellipsis),
    ([6], -2, slice(1, None)),
]


@pytest.mark.parametrize("key", KEYS, ids=[repr(k)[:40] for k in KEYS])
def test_getitem_matches_numpy(tmp_path, key):
    vol = _volume(np.uint8, shape=(8, 12, 10))
    path = io.write_stack(tmp_path / "v.tif", vol)
    packed = io.write_stack(tmp_path / "p.tif", vol, compression="zlib")
    for p in (path, packed):
        with io.open_stack(p, crop="1:,2:11,0:9") as stack:
            ref = vol[1:, 2:11, 0:9][key]
            got = stack[key]
            assert got.shape == ref.shape and got.dtype == ref.dtype
            np.testing.assert_array_equal(got, ref)


def test_getitem_errors_and_read(tmp_path):
    vol = _volume(np.uint8, shape=(6, 8, 8))
    with io.open_stack(io.write_stack(tmp_path / "v.tif", vol)) as stack:
        with pytest.raises(IndexError):
            stack[6]
        with pytest.raises(IndexError):
            stack[[0, 9]]
        with pytest.raises(IndexError):
            stack[0, 0, 0, 0]
        np.testing.assert_array_equal(stack.read(2, 5), vol[2:5])
        with pytest.raises(IndexError):
            stack.read(4, 9)
        assert len(stack) == 6 and stack.ndim == 3
        assert [s.shape for s in stack] == [(8, 8)] * 6
        np.testing.assert_array_equal(np.asarray(stack), vol)
        out = stack[1]
        out[:] = 0  # results are copies, never views of the file
        np.testing.assert_array_equal(stack[1], vol[1])


def test_close_and_copy(tmp_path):
    vol = _volume(np.uint8, shape=(6, 8, 8))
    path = io.write_stack(tmp_path / "v.tif", vol, compression="zlib")
    stack = io.open_stack(path, crop="1:4,:,:")
    twin = copy.copy(stack)  # reopens the file with the same crop
    with stack:
        pass
    assert stack.closed
    with pytest.raises(StackError, match="closed"):
        stack[0]
    np.testing.assert_array_equal(twin[:], vol[1:4])
    twin.close()


# -------------------------------------------------------------------------------- crop


def test_crop_parse_and_apply(tmp_path):
    crop = io.Crop.parse("0:5, :, 3:9")
    assert crop == io.Crop(z=(0, 5), y=(None, None), x=(3, 9))
    assert str(crop) == "0:5,:,3:9"
    assert io.Crop.parse(str(crop)) == crop
    vol = _volume(np.uint16, shape=(8, 12, 10))
    path = io.write_stack(tmp_path / "v.tif", vol, voxel_size=(10, 5, 5))
    with io.open_stack(path, crop=io.Crop(z=(2, 6), y=(1, 11), x=(None, 4))) as stack:
        assert stack.shape == (4, 10, 4) and stack.source_shape == vol.shape
        np.testing.assert_array_equal(stack[:], vol[2:6, 1:11, :4])
        assert stack.voxel_size == pytest.approx((10, 5, 5))


@pytest.mark.parametrize(
    "text,words",
    [
        ("0:5,:", "three comma-separated"),
        ("a:b,:,:", "start:stop"),
        ("5:2,:,:", "empty"),
        ("0:5,-3:,:", "start:stop"),
    ],
)
def test_crop_parse_errors(text, words):
    with pytest.raises(ConfigError, match=words):
        io.Crop.parse(text)


def test_crop_outside_stack(tmp_path):
    path = io.write_stack(tmp_path / "v.tif", _volume(np.uint8, shape=(6, 8, 8)))
    with pytest.raises(ConfigError, match=r"crop y 0:20 does not fit.*8 rows"):
        io.open_stack(path, crop="0:3,0:20,:")


# ------------------------------------------------------------------------ voxel sizes


@pytest.mark.parametrize(
    "unit,scale", [("um", 1000.0), ("micron", 1000.0), ("\\u00B5m", 1000.0), ("nm", 1.0), ("mm", 1e6)]
)
def test_imagej_voxel_size_units(tmp_path, unit, scale):
    vol = _volume(np.uint8, shape=(6, 8, 8))
    path = tmp_path / "ij.tif"
    tifffile.imwrite(
        path, vol, imagej=True, resolution=(1 / 0.004, 1 / 0.005),
        metadata={"axes": "ZYX", "spacing": 0.01, "unit": unit},
    )
    with io.open_stack(path) as stack:
        assert stack.format == "imagej"
        assert stack.voxel_size == pytest.approx((0.01 * scale, 0.005 * scale, 0.004 * scale), rel=1e-6)


def test_imagej_without_unit_or_spacing(tmp_path):
    vol = _volume(np.uint8, shape=(6, 8, 8))
    tifffile.imwrite(tmp_path / "a.tif", vol, imagej=True, metadata={"axes": "ZYX"})
    with io.open_stack(tmp_path / "a.tif") as stack:
        assert stack.voxel_size is None and stack.voxel_size_partial == (None, None, None)
    # ImageJ omits spacing when it equals 1 unit
    tifffile.imwrite(
        tmp_path / "b.tif", vol, imagej=True, resolution=(0.5, 0.5), metadata={"axes": "ZYX", "unit": "nm"}
    )
    with io.open_stack(tmp_path / "b.tif") as stack:
        assert stack.voxel_size == pytest.approx((1.0, 2.0, 2.0))


def test_imagej_hyperstack_singletons_squeezed(tmp_path):
    vol = _volume(np.uint8, shape=(1, 7, 1, 8, 9))
    path = tmp_path / "h.tif"
    tifffile.imwrite(path, vol, imagej=True, metadata={"axes": "TZCYX"})
    with io.open_stack(path) as stack:
        assert stack.shape == (7, 8, 9)
        np.testing.assert_array_equal(stack[:], vol[0, :, 0])


def test_ome_voxel_size(tmp_path):
    vol = _volume(np.uint16, shape=(6, 8, 8))
    path = tmp_path / "v.ome.tif"
    tifffile.imwrite(
        path, vol, ome=True,
        metadata={"axes": "ZYX", "PhysicalSizeX": 0.004, "PhysicalSizeY": 0.005,  # default unit: µm
                  "PhysicalSizeZ": 15.0, "PhysicalSizeZUnit": "nm"},
    )
    with io.open_stack(path) as stack:
        assert stack.format == "ome"
        assert stack.voxel_size == pytest.approx((15.0, 5.0, 4.0))
        assert stack.voxel_size_source == ("ome",) * 3
        np.testing.assert_array_equal(stack[:], vol)


def test_user_voxel_size_overrides_metadata(tmp_path):
    path = io.write_stack(tmp_path / "v.tif", _volume(np.uint8), voxel_size=(10, 5, 5))
    with io.open_stack(path, voxel_size=(20, None, 4)) as stack:
        assert stack.voxel_size == pytest.approx((20, 5, 4))
        assert stack.voxel_size_source == ("argument", "imagej", "argument")
    with pytest.raises(ConfigError, match="three entries"):
        io.open_stack(path, voxel_size=(1, 2))
    with pytest.raises(ConfigError, match="positive"):
        io.open_stack(path, voxel_size=(0, 1, 1))


def test_fei_infobar_cropped_and_pixel_size(tmp_path, caplog):
    scan_h, bar, w = 12, 4, 10
    vol = _volume(np.uint8, shape=(6, scan_h + bar, w)) // 2  # image values < 128
    vol[:, scan_h:] = 255  # the information bar
    path = tmp_path / "fei.tif"
    tifffile.imwrite(path, vol, photometric="minisblack", extratags=_fei_tag(scan_h, w, bar))
    with caplog.at_level(logging.WARNING, logger="activeseg"):
        stack = io.open_stack(path)
    with stack:
        assert stack.infobar_rows == bar
        assert stack.shape == (6, scan_h, w) and stack.source_shape == (6, scan_h + bar, w)
        assert stack[:].max() < 255
        np.testing.assert_array_equal(stack[:], vol[:, :scan_h])
        assert stack.voxel_size is None  # z is never in FEI tags
        assert stack.voxel_size_partial == pytest.approx((None, 4.5, 4.5)) or (
            stack.voxel_size_partial[0] is None and stack.voxel_size_partial[1:] == pytest.approx((4.5, 4.5))
        )
    assert "z unknown" in caplog.text
    with io.open_stack(path, voxel_size=(10, None, None), crop=":,2:,:") as stack:
        assert stack.voxel_size == pytest.approx((10, 4.5, 4.5))
        assert stack.voxel_size_source == ("argument", "fei", "fei")
        np.testing.assert_array_equal(stack[:], vol[:, 2:scan_h])  # crop after the bar


def test_fei_folder_of_slices(tmp_path):
    folder = tmp_path / "asv"
    folder.mkdir()
    vol = _volume(np.uint8, shape=(5, 14, 9)) // 2
    for z in range(5):
        tifffile.imwrite(folder / f"slice_{z}.tif", vol[z], extratags=_fei_tag(10, 9, 4))
    with io.open_stack(folder) as stack:
        assert stack.infobar_rows == 4 and stack.shape == (5, 10, 9)
        np.testing.assert_array_equal(stack[:], vol[:, :10])
        assert stack.voxel_size_partial[1:] == pytest.approx((4.5, 4.5))


def test_detect_infobar_rules():
    assert io.detect_infobar({"Image": {"ResolutionY": 884}, "PrivateFei": {"DatabarHeight": 59}}, 943) == 59
    assert io.detect_infobar({"Image": {"ResolutionY": 884}}, 900) == 16
    # exported without the bar: the scan height equals the stored height
    assert io.detect_infobar({"Image": {"ResolutionY": 884}, "PrivateFei": {"DatabarHeight": 59}}, 884) == 0
    assert io.detect_infobar({"PrivateFei": {"DatabarHeight": 70}}, 1094) == 70
    assert io.detect_infobar({"PrivateFei": {"DatabarHeight": 2000}}, 1094) == 0
    assert io.detect_infobar({}, 100) == 0 and io.detect_infobar(None, 100) == 0


@pytest.mark.parametrize("value,unit,nm", [("2.5", "nm", 2.5), ("0.0031", "µm", 3.1)])
def test_zeiss_pixel_size(tmp_path, value, unit, nm):
    # SmartSEM writes the CZ_SEM text in latin-1 ("µm")
    text = f"AP_IMAGE_PIXEL_SIZE\r\nImage Pixel Size = {value} {unit}\r\nAP_WD\r\nWD = 5.1 mm\r\n".encode("latin-1")
    path = tmp_path / "zeiss.tif"
    tifffile.imwrite(path, _volume(np.uint8), photometric="minisblack", extratags=[(34118, "s", 0, text, True)])
    with io.open_stack(path, voxel_size=(7, None, None)) as stack:
        assert stack.voxel_size == pytest.approx((7, nm, nm))
        assert stack.voxel_size_source == ("argument", "zeiss", "zeiss")


# ------------------------------------------------------------------------- bad inputs


def test_nonexistent_path(tmp_path):
    with pytest.raises(StackError, match="no such file or folder"):
        io.open_stack(tmp_path / "missing.tif")


def test_errors_are_activeseg_and_builtin(tmp_path):
    with pytest.raises(ActiveSegError):
        io.open_stack(tmp_path / "missing.tif")
    with pytest.raises(ValueError):
        io.open_stack(tmp_path / "missing.tif")


def test_2d_tiff_and_png(tmp_path):
    tifffile.imwrite(tmp_path / "one.tif", np.zeros((30, 40), np.uint8))
    with pytest.raises(StackError, match=r"single 2D image of shape \(30, 40\).*stack of\s+slices"):
        io.open_stack(tmp_path / "one.tif")
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(tmp_path / "one.png")
    with pytest.raises(StackError, match=r"single 2D image of shape \(30, 40\).*folder"):
        io.open_stack(tmp_path / "one.png")


def test_rgb_and_multichannel(tmp_path):
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((5, 8, 8, 3), np.uint8), photometric="rgb")
    with pytest.raises(StackError, match=r"looks like RGB.*convert to grayscale"):
        io.open_stack(tmp_path / "rgb.tif")
    tifffile.imwrite(tmp_path / "rgb2d.tif", np.zeros((8, 8, 3), np.uint8), photometric="rgb")
    with pytest.raises(StackError, match="RGB"):
        io.open_stack(tmp_path / "rgb2d.tif")
    tifffile.imwrite(tmp_path / "ch.tif", np.zeros((5, 2, 8, 8), np.uint8), imagej=True, metadata={"axes": "ZCYX"})
    with pytest.raises(StackError, match=r"2 channels.*multichannel.*Split Channels"):
        io.open_stack(tmp_path / "ch.tif")
    folder = tmp_path / "rgbpng"
    folder.mkdir()
    colour = np.zeros((8, 8, 3), np.uint8)
    colour[..., 0] = 200  # truly colour (an RGB file whose channels are equal is read as grey)
    for i in range(3):
        Image.fromarray(colour).save(folder / f"s{i}.png")
    with pytest.raises(StackError, match=r"s0\.png.*RGB.*grayscale"):
        io.open_stack(folder)


def test_4d(tmp_path):
    tifffile.imwrite(tmp_path / "t.tif", np.zeros((2, 3, 8, 8), np.uint8), imagej=True, metadata={"axes": "TZYX"})
    with pytest.raises(StackError, match=r"4D.*T=2, Z=3.*one 3D"):
        io.open_stack(tmp_path / "t.tif")
    tifffile.imwrite(tmp_path / "q.tif", np.zeros((2, 5, 8, 8), np.uint8), photometric="minisblack")
    with pytest.raises(StackError, match="4D"):
        io.open_stack(tmp_path / "q.tif")


def test_empty_inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(StackError, match=r"no slice images.*\(it is empty\)"):
        io.open_stack(tmp_path / "empty")
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "readme.txt").write_text("x")
    with pytest.raises(StackError, match=r"no slice images.*readme\.txt"):
        io.open_stack(tmp_path / "texts")
    (tmp_path / "zero.tif").write_bytes(b"")
    with pytest.raises(StackError, match=r"empty \(0 bytes\)"):
        io.open_stack(tmp_path / "zero.tif")


def test_non_image_and_garbage(tmp_path):
    (tmp_path / "notes.txt").write_text("hello world, not an image")
    with pytest.raises(StackError, match=r"not an image stack.*TIFF.*folder"):
        io.open_stack(tmp_path / "notes.txt")
    (tmp_path / "garbage.tif").write_bytes(np.random.default_rng(1).bytes(4096))
    with pytest.raises(StackError, match=r"not a valid TIFF.*corrupt"):
        io.open_stack(tmp_path / "garbage.tif")
    # a TIFF header followed by garbage
    (tmp_path / "badifd.tif").write_bytes(b"II*\x00" + b"\xff\xff\xff\x7f" + b"\x00" * 64)
    with pytest.raises(StackError, match=r"truncated or corrupt"):
        io.open_stack(tmp_path / "badifd.tif")


def test_truncated_uncompressed(tmp_path):
    vol = _volume(np.uint8, shape=(10, 32, 32))
    path = io.write_stack(tmp_path / "v.tif", vol)
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(size - 3 * 32 * 32)
    with pytest.raises(StackError, match=r"truncated.*copy it again"):
        io.open_stack(path)


@pytest.mark.parametrize("compression", [None, "zlib"])
@pytest.mark.parametrize("keep", [0.5, 0.75])
def test_truncated_plain_multipage(tmp_path, compression, keep):
    vol = _volume(np.uint8, shape=(10, 32, 32))
    path = tmp_path / "z.tif"
    with tifffile.TiffWriter(path) as tw:  # instrument-style: one IFD per slice, no metadata
        for z in range(10):
            tw.write(vol[z], compression=compression, metadata=None)
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(int(size * keep))
    with pytest.raises(StackError, match=r"truncated"):
        with io.open_stack(path) as stack:
            stack[:]  # if opening succeeds on what remains, the missing slices must fail


def test_nan_lazy_and_validate(tmp_path):
    vol = _volume(np.float32, shape=(6, 8, 8))
    vol[4, 2, 3] = np.nan
    path = tmp_path / "nan.tif"
    tifffile.imwrite(path, vol, photometric="minisblack")
    with io.open_stack(path) as stack:
        np.testing.assert_array_equal(stack[:4], vol[:4])  # clean slices read fine
        with pytest.raises(StackError, match=r"slice 4 .*NaN"):
            stack[4]
        with pytest.raises(StackError, match=r"slice 4 .*NaN"):
            stack[:]
    with pytest.raises(StackError, match=r"slice 4 .*NaN"):
        io.open_stack(path, validate=True)
    calls = []
    ok = io.write_stack(tmp_path / "ok.tif", np.nan_to_num(vol))
    io.open_stack(ok, validate=True).validate(callback=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (6, 6)


def test_inf_lazy_and_validate(tmp_path):
    vol = _volume(np.float32, shape=(6, 8, 8))
    vol[2, 1, 1] = np.inf
    vol[2, 5, 5] = np.inf
    vol[2, 0, 7] = -np.inf
    path = tmp_path / "inf.tif"
    tifffile.imwrite(path, vol, photometric="minisblack")
    with io.open_stack(path) as stack:
        np.testing.assert_array_equal(stack[:2], vol[:2])  # clean slices read fine
        np.testing.assert_array_equal(stack[3:], vol[3:])
        with pytest.raises(StackError) as info:
            stack[2]
    msg = str(info.value)
    for words in ("slice 2 ", "inf.tif", "3 non-finite", "2 +inf", "1 -inf", "nan_to_num", "save the stack again"):
        assert words in msg
    assert "NaN" not in msg
    with pytest.raises(StackError, match=r"slice 2 .*non-finite"):
        io.open_stack(path, validate=True)
    vol[2, 3, 3] = np.nan  # NaN and inf together: both counted, NaN named
    tifffile.imwrite(path, vol, photometric="minisblack")
    with pytest.raises(StackError, match=r"slice 2 .*4 non-finite value\(s\) \(1 NaN, 2 \+inf, 1 -inf\).*Remove NaNs"):
        io.open_stack(path)[2]


def test_intensity_warning_constant_near_constant_and_normal(tmp_path):
    path = io.write_stack(tmp_path / "flat.tif", np.full((5, 8, 8), 300, np.uint16))
    with io.open_stack(path) as st:
        msg = io.intensity_warning(st)
    assert msg is not None and "\n" not in msg
    for words in ("flat.tif", "is constant", "every sampled pixel is 300", "no classifier", "right file/channel"):
        assert words in msg
    nearly = np.full((5, 40, 40), 7, np.uint8)
    nearly[:, ::2] = 8  # two grey levels only
    nearly[0, 0, 0] = 250  # one outlier does not make it an image
    msg = io.intensity_warning(nearly)
    assert msg is not None and "nearly constant" in msg and "7..8" in msg and "7..250" in msg
    flat_float = np.full((4, 8, 8), 1000.0, np.float32)
    flat_float[:, :4] += np.float32(0.0001)  # float32 steps apart
    assert "nearly constant" in (io.intensity_warning(flat_float) or "")
    # normal data
    assert io.intensity_warning(_volume(np.uint8, shape=(6, 16, 16))) is None
    assert io.intensity_warning(_volume(np.float32, shape=(6, 16, 16))) is None
    with io.open_stack(io.write_stack(tmp_path / "rand.tif", _volume(np.uint16))) as st:
        assert io.intensity_warning(st) is None


def test_intensity_warning_samples_evenly_spaced_slices():
    vol = np.zeros((40, 8, 8), np.uint8)
    vol[39] = _volume(np.uint8, shape=(8, 8))  # the last slice is always sampled
    assert io.intensity_warning(vol, n_sample=2) is None
    vol = np.zeros((40, 8, 8), np.uint8)
    vol[20] = _volume(np.uint8, shape=(8, 8))  # not among slices 0 and 39
    assert "constant" in io.intensity_warning(vol, n_sample=2)
    assert io.intensity_warning(vol, n_sample=40) is None
    with pytest.raises(ConfigError, match="n_sample"):
        io.intensity_warning(vol, n_sample=0)


def test_folder_mixed_shapes_names_file(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i in range(4):
        shape = (16, 16) if i != 2 else (16, 15)
        tifffile.imwrite(folder / f"img_{i}.tif", np.zeros(shape, np.uint8))
    tifffile.imwrite(folder / "img_3b.tif", np.zeros((12, 12), np.uint8))
    with pytest.raises(StackError, match=r"mixes slice shapes: img_2\.tif is \(16, 15\).*img_0\.tif"):
        io.open_stack(folder)


def test_multipage_tiff_with_mixed_page_shapes(tmp_path):
    path = tmp_path / "mixed.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(np.zeros((16, 16), np.uint8), metadata=None)
        tw.write(np.zeros((16, 15), np.uint8), metadata=None)
    with pytest.raises(StackError, match=r"2 pages of different shapes.*\(16, 15\).*\(16, 16\)"):
        io.open_stack(path)


def test_folder_with_stack_file_and_mixed_dtypes(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", np.zeros((5, 8, 8), np.uint8))
    with pytest.raises(StackError, match=r"a\.tif is itself a stack"):
        io.open_stack(folder)
    (folder / "a.tif").unlink()
    tifffile.imwrite(folder / "a.tif", np.zeros((8, 8), np.uint8))
    tifffile.imwrite(folder / "b.tif", np.zeros((8, 8), np.uint16))
    with pytest.raises(StackError, match=r"mixes dtypes: b\.tif"):
        io.open_stack(folder)


# ------------------------------------------------------------------------------ writing


@pytest.mark.parametrize(
    "kind,dtype,words",
    [
        ("labels", np.uint16, r"labels.*uint8"),
        ("probabilities", np.float64, r"float32"),
        ("image", np.int32, r"uint8, uint16, float32"),
    ],
)
def test_write_stack_dtype_per_kind(tmp_path, kind, dtype, words):
    with pytest.raises(StackError, match=words):
        io.write_stack(tmp_path / "x.tif", np.zeros((3, 4, 4), dtype), kind=kind)
    assert not (tmp_path / "x.tif").exists()


def test_write_stack_other_validation(tmp_path):
    with pytest.raises(StackError, match=r"3D.*np.newaxis"):
        io.write_stack(tmp_path / "x.tif", np.zeros((4, 4), np.uint8))
    bad = np.full((3, 4, 4), 0.5, np.float32)
    bad[1, 0, 0] = 1.5
    with pytest.raises(StackError, match=r"\[0, 1\]"):
        io.write_stack(tmp_path / "p.tif", bad, kind="probabilities")
    bad[1, 0, 0] = np.nan
    with pytest.raises(StackError, match=r"NaN.*slice 1"):
        io.write_stack(tmp_path / "p.tif", bad, kind="image")
    with pytest.raises(ConfigError, match="kind"):
        io.write_stack(tmp_path / "p.tif", np.zeros((3, 4, 4), np.uint8), kind="mask")
    with pytest.raises(ConfigError, match="compression"):
        io.write_stack(tmp_path / "p.tif", np.zeros((3, 4, 4), np.uint8), compression="jpeg")
    with pytest.raises(ConfigError, match="all of"):
        io.write_stack(tmp_path / "p.tif", np.zeros((3, 4, 4), np.uint8), voxel_size=(None, 1, 1))
    assert list(tmp_path.iterdir()) == []  # nothing, not even a temporary file


def test_write_labels_and_probabilities(tmp_path):
    labels = np.random.default_rng(0).integers(0, 2, size=(5, 8, 8)).astype(np.uint8)
    labels[0] = 255
    path = io.write_stack(tmp_path / "sub" / "labels.tif", labels, kind="labels", voxel_size=(10, 5, 5))
    with tifffile.TiffFile(path) as tif:
        lut = np.asarray(tif.imagej_metadata["LUTs"]).reshape(-1, 3, 256)[0]
        assert lut.shape == (3, 256)
        assert tuple(lut[:, 0]) != tuple(lut[:, 1]) != tuple(lut[:, 255])
    np.testing.assert_array_equal(io.read_stack(path), labels)
    probs = np.random.default_rng(1).random((5, 8, 8), dtype=np.float32)
    ppath = io.write_stack(tmp_path / "p.tif", probs, kind="probabilities", compression="zlib")
    with io.open_stack(ppath) as st:
        assert st.dtype == np.float32 and not st.memmapped
        np.testing.assert_array_equal(st[:], probs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.tif", "sub"]


def test_create_stack_streaming(tmp_path):
    path = tmp_path / "out" / "prob.tif"
    mm = io.create_stack(path, (7, 9, 11), np.float32, voxel_size=(8, 4, 4), kind="probabilities")
    assert isinstance(mm, np.memmap) and mm.shape == (7, 9, 11)
    ref = np.random.default_rng(2).random((7, 9, 11), dtype=np.float32)
    for z in range(7):
        mm[z] = ref[z]
    mm.flush()
    del mm
    with io.open_stack(path) as st:
        assert st.memmapped and st.format == "imagej"
        assert st.voxel_size == pytest.approx((8, 4, 4))
        np.testing.assert_array_equal(st[:], ref)
    with pytest.raises(StackError, match="uint8"):
        io.create_stack(tmp_path / "l.tif", (2, 3, 3), np.uint16, kind="labels")
    with pytest.raises(ConfigError, match="shape"):
        io.create_stack(tmp_path / "l.tif", (2, 3), np.uint8)


def _leftovers(folder):
    return sorted(n for n in os.listdir(folder) if n.endswith(".tmp"))


def _full_disk(target, *args, **kwargs):
    """Stands in for tifffile.imwrite on a full disk: a few bytes, then ENOSPC."""
    with open(target, "wb") as fh:
        fh.write(b"II*\x00partial")
    raise OSError(errno.ENOSPC, "No space left on device", str(target))


def test_write_stack_disk_full_keeps_previous_file(tmp_path, monkeypatch):
    path = io.write_stack(tmp_path / "seg.tif", _volume(np.uint8, shape=(3, 8, 8)))
    before = path.read_bytes()
    monkeypatch.setattr(io.writers.tifffile, "imwrite", _full_disk)
    with pytest.raises(OutputError) as info:
        io.write_stack(path, _volume(np.uint8, shape=(3, 8, 8), seed=1))
    assert info.value.errno == errno.ENOSPC
    assert "seg.tif" in info.value.args[0] and "disk is full" in info.value.args[0]
    assert path.read_bytes() == before
    assert _leftovers(tmp_path) == []
    with pytest.raises(OutputError):
        io.write_stack(tmp_path / "new.tif", _volume(np.uint8, shape=(3, 8, 8)))
    assert sorted(os.listdir(tmp_path)) == ["seg.tif"]


def test_write_stack_disk_full_message_is_readable(tmp_path, monkeypatch):
    # str() is what the command line prints: it must be the message, not "[Errno 28] None: path"
    monkeypatch.setattr(io.writers.tifffile, "imwrite", _full_disk)
    with pytest.raises(OutputError, match=r"cannot write .*seg\.tif: the disk is full"):
        io.write_stack(tmp_path / "seg.tif", _volume(np.uint8, shape=(3, 8, 8)))


def test_write_stack_refuses_when_it_cannot_fit(tmp_path, monkeypatch):
    usage = type(safety.shutil.disk_usage(tmp_path))
    monkeypatch.setattr(safety.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(OutputError, match=r"writing .*big\.tif needs .* only 1000 B is free"):
        io.write_stack(tmp_path / "big.tif", np.zeros((4, 64, 64), np.uint8))
    with pytest.raises(OutputError, match=r"creating .*mm\.tif needs"):
        io.create_stack(tmp_path / "mm.tif", (4, 64, 64), np.uint8)
    assert os.listdir(tmp_path) == []


def test_create_stack_reserves_blocks_and_cleans_up(tmp_path, monkeypatch):
    calls = []
    real_reserve = safety.reserve

    def spy(p, n):
        calls.append((str(p), n))
        real_reserve(p, n)

    monkeypatch.setattr(safety, "reserve", spy)
    path = tmp_path / "p.tif"
    mm = io.create_stack(path, (3, 8, 8), np.float32, kind="probabilities")
    mm[:] = 0.5
    mm.flush()
    del mm
    assert calls == [(str(path), path.stat().st_size)]
    assert path.stat().st_size >= 3 * 8 * 8 * 4

    def no_room(p, n):
        raise OutputError(f"cannot write {p}: the disk is full")

    monkeypatch.setattr(safety, "reserve", no_room)
    with pytest.raises(OutputError, match="disk is full"):
        io.create_stack(tmp_path / "q.tif", (3, 8, 8), np.float32, kind="probabilities")
    assert not (tmp_path / "q.tif").exists()
    assert sorted(os.listdir(tmp_path)) == ["p.tif"]


# ------------------------------------------------------------------------------- labels


def test_labels_mask_stack_and_shape_check(tmp_path):
    lab = np.random.default_rng(0).integers(0, 2, size=(6, 8, 8)).astype(np.uint8)
    path = io.write_stack(tmp_path / "mask.tif", lab, kind="labels")
    got = io.read_labels(path, shape=(6, 8, 8), kind="mask")
    assert sorted(got) == list(range(6))
    for z, arr in got.items():
        assert arr.dtype == np.uint8
        np.testing.assert_array_equal(arr, lab[z])
    sel = io.read_labels(path, kind="mask", slices=[4, 1])
    assert sorted(sel) == [1, 4]
    with pytest.raises(LabelError, match=r"shape \(6, 8, 8\).*image is \(6, 8, 9\)"):
        io.read_labels(path, shape=(6, 8, 9))


def test_labels_binary_0_255_warns(tmp_path, caplog):
    lab = np.zeros((5, 8, 8), np.uint8)
    lab[2, 2:5, 2:5] = 255
    path = tmp_path / "fiji.tif"
    tifffile.imwrite(path, lab, imagej=True, metadata={"axes": "ZYX"})
    with caplog.at_level(logging.WARNING, logger="activeseg"):
        got = io.read_labels(path, kind="mask")
    np.testing.assert_array_equal(got[2], (lab[2] == 255).astype(np.uint8))
    assert "0/255" in caplog.text and "0/1" in caplog.text
    # with three classes a 255 is not a pore but out of range
    with pytest.raises(LabelError) as info:
        io.read_labels(path, kind="mask", n_classes=3)
    for words in ("values 255", "slice z=2", "kind='mask'", "0..2", "kind='partial'"):
        assert words in str(info.value)


def test_labels_partial_keeps_only_labelled_slices(tmp_path):
    lab = np.full((6, 8, 8), 255, np.uint8)
    lab[1, :2] = 0
    lab[4, 3:] = 1
    path = io.write_stack(tmp_path / "partial.tif", lab, kind="labels")
    got = io.read_labels(path, kind="partial")
    assert sorted(got) == [1, 4]
    np.testing.assert_array_equal(got[4], lab[4])


def test_labels_scribble_convention(tmp_path):
    scrib = np.zeros((5, 8, 8), np.uint8)
    scrib[3, 0, :4] = 1  # class 0 (solid)
    scrib[3, 7, :4] = 2  # class 1 (pore)
    path = tmp_path / "scribbles.tif"
    tifffile.imwrite(path, scrib, photometric="minisblack")
    got = io.read_labels(path, kind="scribble")
    assert list(got) == [3]
    exp = np.full((8, 8), 255, np.uint8)
    exp[0, :4] = 0
    exp[7, :4] = 1
    np.testing.assert_array_equal(got[3], exp)
    scrib[1, 0, 0] = 3
    tifffile.imwrite(path, scrib, photometric="minisblack")
    with pytest.raises(LabelError) as info:
        io.read_labels(path, kind="scribble")
    for words in ("values 3 ", "slice z=1", "ilastik", "class c stored as c + 1"):
        assert words in str(info.value)


def test_labels_out_of_range_names_values_slice_convention(tmp_path):
    lab = np.zeros((5, 8, 8), np.uint8)
    lab[3, 0, 0] = 7
    lab[3, 0, 1] = 2
    path = io.write_stack(tmp_path / "bad.tif", lab, kind="labels")
    with pytest.raises(LabelError) as info:
        io.read_labels(path, kind="partial")
    msg = str(info.value)
    assert "2, 7" in msg and "z=3" in msg and "255 = unlabelled" in msg and "0..1" in msg


def test_labels_folder_napari_int32_and_names(tmp_path):
    folder = tmp_path / "corrected"
    folder.mkdir()
    a = np.zeros((8, 8), np.int32)
    a[2:4] = 1
    tifffile.imwrite(folder / "mask_z0120.tif", a)
    Image.fromarray(np.ones((8, 8), np.uint8)).save(folder / "mask_z7.png")
    (folder / "readme.txt").write_text("ignored")
    got = io.read_labels(folder, shape=(200, 8, 8), kind="mask")
    assert sorted(got) == [7, 120]
    np.testing.assert_array_equal(got[120], a.astype(np.uint8))
    assert got[7].dtype == np.uint8 and (got[7] == 1).all()
    assert io.slice_index_from_name("mask_z0120.tif") == 120
    assert io.slice_index_from_name("blaze12.tif") is None
    with pytest.raises(LabelError, match=r"index 120 is outside"):
        io.read_labels(folder, shape=(100, 8, 8))
    with pytest.raises(LabelError, match=r"shape \(8, 8\).*\(8, 9\)"):
        io.read_labels(folder, shape=(200, 8, 9))
    tifffile.imwrite(folder / "other_z120.tif", a)
    with pytest.raises(LabelError, match=r"both claim slice z=120"):
        io.read_labels(folder)
    (folder / "other_z120.tif").unlink()
    tifffile.imwrite(folder / "mask.tif", a)
    with pytest.raises(LabelError, match=r"mask\.tif.*no slice index"):
        io.read_labels(folder)


def test_labels_single_file_and_napari_out_of_range(tmp_path):
    a = np.zeros((8, 8), np.int32)
    a[0, 0] = 5
    tifffile.imwrite(tmp_path / "labels_z0004.tif", a)
    with pytest.raises(LabelError, match=r"z=4\).*values 5 "):
        io.read_labels(tmp_path / "labels_z0004.tif")
    tifffile.imwrite(tmp_path / "plain.tif", a)
    with pytest.raises(LabelError, match="without a slice index"):
        io.read_labels(tmp_path / "plain.tif")
    with pytest.raises(LabelError, match="no such"):
        io.read_labels(tmp_path / "nothing.tif")
    with pytest.raises(ConfigError, match="kind"):
        io.read_labels(tmp_path / "plain.tif", kind="dense")
    with pytest.raises(ConfigError, match="n_classes"):
        io.read_labels(tmp_path / "plain.tif", n_classes=1)


def test_normalize_labels_conventions():
    assert io.normalize_labels(np.array([[0, 1], [1, 0]], np.int32)).tolist() == [[0, 1], [1, 0]]
    assert io.normalize_labels(np.array([[0, 3]], np.uint8), kind="scribble", n_classes=3).tolist() == [[255, 2]]
    assert io.normalize_labels(np.array([[0.0, 1.0]], np.float32)).dtype == np.uint8
    with pytest.raises(LabelError, match="non-integer"):
        io.normalize_labels(np.array([[0.5, 1.0]], np.float32))
    with pytest.raises(LabelError, match=r"values -1"):
        io.normalize_labels(np.array([[-1, 1]], np.int32))


def test_labels_single_slice_file_written_by_write_stack(tmp_path):
    # exported masks are (1, Y, X) ImageJ files: readers see one 2D plane
    mask = np.zeros((1, 8, 9), np.uint8)
    mask[0, 2:5] = 1
    path = io.write_stack(tmp_path / "z0120_mask.tif", mask, kind="labels", voxel_size=(10, 5, 5))
    with pytest.raises(StackError, match="single 2D image"):
        io.read_stack(path)  # not a stack
    got = io.read_labels(path, shape=(8, 9), kind="mask")  # (Y, X): slice shape only
    assert list(got) == [120]
    np.testing.assert_array_equal(got[120], mask[0])
    with pytest.raises(LabelError, match=r"shape \(8, 9\).*\(8, 8\)"):
        io.read_labels(path, shape=(8, 8))


def test_multiclass_probabilities_zcyx(tmp_path):
    probs = np.random.default_rng(3).random((4, 3, 6, 5), dtype=np.float32)
    path = io.write_stack(tmp_path / "p.tif", probs, kind="probabilities", voxel_size=(10, 5, 5))
    with tifffile.TiffFile(path) as tif:
        assert tif.series[0].axes == "ZCYX"
        np.testing.assert_array_equal(tif.asarray(), probs)
    mm = io.create_stack(tmp_path / "q.tif", (4, 3, 6, 5), np.float32, kind="probabilities")
    mm[:] = probs
    mm.flush()
    del mm
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "q.tif"), probs)
    with pytest.raises(StackError, match="multichannel"):
        io.open_stack(path)
    with pytest.raises(StackError, match="3D"):
        io.write_stack(tmp_path / "x.tif", np.zeros((2, 2, 4, 4), np.uint8))
