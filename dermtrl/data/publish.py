"""Moved to :mod:`dermtrl.hub.dataset`; this path still works for one release and warns."""

import sys
import warnings

import dermtrl.hub.dataset as _moved

warnings.warn("dermtrl.data.publish moved to dermtrl.hub.dataset; "
              "the old import path will be removed in the next release", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
