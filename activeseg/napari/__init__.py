"""activeseg in napari (the ``napari`` extra: ``pip install "activeseg[napari]"``).

- :mod:`activeseg.napari.correct` — ``activeseg correct``: the queried slices of the open
  round in one window (image with its z context, the pre-filled mask as an editable
  Labels layer, uncertainty overlays), saved and imported with one key.

Nothing is imported here: napari and Qt load only when a module of this package is
imported, so the core install stays GUI-free (docs/architecture.md §2).
"""
