"""Moved to :mod:`dermtrl.hub.adapter`; this path still works for one release and warns."""

import sys
import warnings

import dermtrl.hub.adapter as _moved

warnings.warn("dermtrl.publish_adapter moved to dermtrl.hub.adapter; "
              "the old import path will be removed in the next release", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
