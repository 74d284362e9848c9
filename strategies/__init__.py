"""Built-in query strategies, installed as ``activeseg.strategies``.

They are registered only through the ``activeseg.strategies`` entry-point group in
``pyproject.toml``, exactly like a third-party plugin. Nothing here imports torch, and
this file imports nothing at all, so loading one strategy imports only its module:

- ``positional``: initial, distributed
- ``sampling``: random, porosity_random
- ``scored``: entropy, margin, bald, disagreement, spaced_entropy, hybrid
- ``diversity``: coreset, ranked_batch (modAL imported inside the function)
- ``regions``: tile_entropy, tile_boundary, tile_random (unit "tiles": they pick tiles)
- ``common``: numpy helpers (the NaN rule, even spreading, spacing), usable by plugins
"""
