"""Read and write FIB-SEM image stacks, label files and probability volumes.

This package is the only part of activeseg that talks to :mod:`tifffile`. Import it
as ``from activeseg import io`` and call ``io.open_stack(...)``; its modules hold one
concern each:

- :mod:`activeseg.io.stack`: the lazy :class:`Stack`, :class:`Crop`,
  :func:`open_stack`, :func:`read_stack`, :func:`intensity_warning`, dtype handling;
- :mod:`activeseg.io.sources`: files and folders on disk (format sniffing, TIFF series
  classification, truncation checks, memmap / page / folder readers,
  :func:`slice_files`, :func:`natural_sort_key`);
- :mod:`activeseg.io.metadata`: voxel size (ImageJ, OME, FEI/Thermo, Zeiss, units)
  and the FEI information bar (:func:`detect_infobar`);
- :mod:`activeseg.io.writers`: :func:`write_stack`, :func:`create_stack`, lookup
  tables, ImageJ/OME metadata written;
- :mod:`activeseg.io.labels`: :func:`read_labels`, :func:`normalize_labels`, label
  conventions, label folders, :func:`slice_index_from_name`;
- :mod:`activeseg.io.zarr_store`: zarr / OME-Zarr stores read lazily, OME-Zarr outputs
  (``.partial`` until complete, a small pyramid), store fingerprints;
- :mod:`activeseg.io.outputs`: :func:`create_output`, whole-stack outputs whose format
  follows the suffix (``.tif`` or ``.zarr``);
- :mod:`activeseg.io.errors`: what counts as a corrupt file, shapes in messages.

Reading
-------
:func:`open_stack` returns a lazy :class:`Stack` of shape ``(Z, Y, X)``. Indexing it
with numpy semantics reads only the slices asked for:

- uncompressed, contiguous TIFF (what ImageJ/Fiji, tifffile and most instruments
  write): a read-only ``numpy.memmap`` over the image data; one slice costs one slice
  of I/O and RSS, however large the file (``Stack.memmapped`` is True);
- compressed or non-contiguous TIFF: page by page (``TiffFile.pages[i].asarray()``),
  the file stays open between reads;
- a folder of single-slice TIFF, PNG, BMP or JPEG files in natural sort order
  (``slice_2`` before ``slice_10``): the files of the slices asked for.

Zarr: an OME-Zarr image or label group (its full resolution), a zarr array (v2 or v3)
or a group holding one array, from a local ``.zarr`` folder (or any folder holding
zarr metadata) or a ``scheme://`` URL (fsspec); only the chunks of the slices asked for
are read. The voxel size comes from the OME-Zarr scale and axis units.

Supported sources: multipage TIFF, ImageJ hyperstack (singleton C/T axes are
squeezed; a real channel axis is an error), OME-TIFF, and folders of slices. PNG (8
and 16 bit), BMP and JPEG slices are decoded by Pillow; an RGB/RGBA file whose
channels are equal (JPEG: within 2 levels) is read as grey, a truly colour one is
refused, as is a 16-bit colour PNG. A folder whose files differ in shape or bit depth
is refused naming the first odd file. These formats carry no voxel size: give it. One
2D image (TIFF, PNG, BMP, JPEG) is not a stack and is refused as such.

Axes: the file's one axis besides Y and X holds the slices, whatever tifffile calls it
(Z, or Q/I/T for files without axis metadata). A file whose only such axis is C with
more than 4 channels, grayscale, is read as a z-stack with a warning: that is what
``tifffile.imwrite(path, zyx, imagej=True)`` without ``metadata={'axes': 'ZYX'}``
writes. 2 to 4 channels are refused as multichannel unless
``open_stack(..., axes="ZYX")`` (command line ``--axes ZYX``) says the single non-YX
axis is z; the override never merges two axes (a Z x C file stays refused).

Dtypes: uint8, uint16 and float32 are read as they are. Other dtypes are converted
when the conversion is exact or harmless: bool -> uint8; int8, int16, float16 and
float64 -> float32 (float64 loses precision beyond 7 significant digits, never
relevant for image intensities). Anything else (int32, uint32, 64-bit integers,
complex) raises :class:`~activeseg.errors.StackError`. Float data are checked for NaN
and +-inf on every read (the error names the slice and counts the values);
``open_stack(..., validate=True)`` scans the whole stack once at open.
:func:`intensity_warning` tells when a stack is constant or nearly so (a wrong file
or channel exported), from a sample of its slices.

Voxel size
----------
``Stack.voxel_size`` is ``(z, y, x)`` in nanometres when all three are known, else
None; ``Stack.voxel_size_partial`` keeps whatever is known (None per unknown axis) and
``Stack.voxel_size_source`` says where each entry came from. Sources, per axis in this
order: the ``voxel_size=`` argument (a 3-tuple; None entries mean "keep what the file
says"), OME ``PhysicalSize{X,Y,Z}`` (+ unit, default micrometre), ImageJ
(1 / ``XResolution``, 1 / ``YResolution``, ``spacing`` with ``unit``; ImageJ omits
``spacing`` when it is 1, so a calibrated ImageJ stack without ``spacing`` has z = 1
unit), FEI/Thermo tags (``[Scan] PixelWidth/PixelHeight`` in metres; z is never in
FEI tags) and Zeiss SEM tags (``ap_image_pixel_size``, x = y; no z). A partially
known voxel size (FEI/Zeiss: y and x only) keeps the known entries; supply z with
``voxel_size=(z, None, None)``. Plain TIFF resolution tags (often a meaningless
72 dpi) are not trusted.

FEI/Thermo instruments store an information bar under the scan. When FEI metadata
show the stored image is taller than the scan (``[Image] ResolutionY``, or
``[PrivateFei] DatabarHeight``) the bar is cropped automatically and recorded in
``Stack.infobar_rows``; the user ``crop`` then applies to the image without the bar.
A Zeiss "data zone" is not described by its metadata and is not detected: remove it
with ``crop``.

Writing
-------
:func:`write_stack` writes an ImageJ-compatible TIFF (axes ZYX, ``spacing`` and
resolution with unit ``nm``) so Fiji and napari open it with the right scale; labels
carry a small lookup table so classes 0/1 (and 255 = unlabelled) are visible in Fiji.
The write is atomic, through :func:`activeseg.safety.atomic_path` (temporary file in
the same folder, fsync, ``os.replace``; on any error the target is left as it was and
the temporary file removed, and an ``OSError`` such as a full disk becomes an
:class:`~activeseg.errors.OutputError` naming the file and the fix); an uncompressed
write that cannot fit on the disk is refused before it starts
(:func:`activeseg.safety.check_free_space`).
:func:`create_stack` returns a writable memmap backed by a new ImageJ TIFF for
streaming outputs larger than RAM. Free space is checked first and the file's disk
blocks are reserved right after it is created (:func:`activeseg.safety.reserve`), so
a full disk raises an error at creation instead of killing the process with SIGBUS
while slices are written. It is *not* atomic (the file exists, zero-filled, from the
start): write it under a temporary name and ``os.replace`` it after ``flush()`` when a
crash must not leave a half-filled file behind.

:func:`create_output` writes whole-stack outputs whose format follows the suffix: a
TIFF (:func:`create_stack` under a temporary name, moved into place on ``commit()``)
or an OME-Zarr store (written as ``NAME.zarr.partial``, renamed when complete; Dask
workers write their own slices through :func:`open_output_block`).

Labels
------
:func:`read_labels` reads labels people drew or corrected (docs/architecture.md §3)
into the in-memory convention (uint8, 0..C-1, 255 = unlabelled), one (Y, X) array per
global slice index. A binary 0/255 mask (anti-aliased edges 252..254 included) says
nothing about which value is pore: ``read_labels(..., pore_value=0 or 255)`` and
:func:`decode_pore_mask` read it split at 128, :class:`PoreMaskStack` decodes a truth
stack lazily, and :func:`pick_pore_value` chooses the polarity that agrees with a
pre-filled mask.
"""

from __future__ import annotations

from activeseg.io.labels import (
    LABEL_KINDS,
    PORE_VALUES,
    PoreMaskStack,
    check_pore_value,
    decode_pore_mask,
    describe_255_values,
    mask_255_values,
    normalize_labels,
    pick_pore_value,
    read_label_planes,
    read_labels,
    slice_index_from_name,
)
from activeseg.io.metadata import detect_infobar
from activeseg.io.outputs import OutputWriter, create_output
from activeseg.io.sources import natural_sort_key
from activeseg.io.sources import slice_files as slice_files  # outside __all__, as before: used by activeseg.session
from activeseg.io.stack import Crop, Stack, intensity_warning, open_stack, read_stack
from activeseg.io.summary import label_summary, stack_summary
from activeseg.io.writers import create_stack, write_stack
from activeseg.io.zarr_store import is_zarr_path, open_output_block

__all__ = [
    "label_summary",
    "stack_summary",
    "Crop",
    "Stack",
    "open_stack",
    "read_stack",
    "write_stack",
    "create_stack",
    "create_output",
    "OutputWriter",
    "is_zarr_path",
    "open_output_block",
    "read_labels",
    "read_label_planes",
    "normalize_labels",
    "PORE_VALUES",
    "PoreMaskStack",
    "check_pore_value",
    "decode_pore_mask",
    "describe_255_values",
    "mask_255_values",
    "pick_pore_value",
    "detect_infobar",
    "intensity_warning",
    "natural_sort_key",
    "slice_index_from_name",
    "LABEL_KINDS",
]
