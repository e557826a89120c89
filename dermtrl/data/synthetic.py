"""Moved to :mod:`dermtrl.cases.synthetic`; this path still works for one release and warns."""

import sys
import warnings

import dermtrl.cases.synthetic as _moved

warnings.warn("dermtrl.data.synthetic moved to dermtrl.cases.synthetic; "
              "the old import path will be removed in the next release", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
