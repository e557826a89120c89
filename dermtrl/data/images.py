"""Moved to :mod:`dermtrl.cases.images`; this path still works for one release and warns."""

import sys
import warnings

import dermtrl.cases.images as _moved

warnings.warn("dermtrl.data.images moved to dermtrl.cases.images; "
              "the old import path will be removed in the next release", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
