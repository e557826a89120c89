"""Moved to :mod:`dermtrl.dermeval.held_out`; this path still works for one release and warns."""

import sys
import warnings

import dermtrl.dermeval.held_out as _moved

warnings.warn("dermtrl.held_out moved to dermtrl.dermeval.held_out; "
              "the old import path will be removed in the next release", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
