"""Moved to :mod:`dermtrl.cases.controls`; this path still works for one release and warns."""

import sys
import warnings

import dermtrl.cases.controls as _moved

warnings.warn("dermtrl.data.controls moved to dermtrl.cases.controls; "
              "the old import path will be removed in the next release", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
