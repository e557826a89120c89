"""Moved to :mod:`dermtrl.cases.loading`; this path still works for one release and warns."""

import sys
import warnings

import dermtrl.cases.loading as _moved

warnings.warn("dermtrl.data.loading moved to dermtrl.cases.loading; "
              "the old import path will be removed in the next release", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
