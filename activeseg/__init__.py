"""activeseg: active-learning segmentation of FIB-SEM stacks with pore-back artifacts.

The package imports nothing heavy at import time (no torch); import the submodules you
need, e.g. ``from activeseg import io, synth, metrics``.
"""

from activeseg.errors import ActiveSegError

__version__ = "0.1.0"

__all__ = ["ActiveSegError", "__version__"]
