"""Moved to :mod:`dermtrl.llm.client`; this path still works for one release and warns."""

import sys
import warnings

import dermtrl.llm.client as _moved

warnings.warn("dermtrl.client moved to dermtrl.llm.client; "
              "the old import path will be removed in the next release", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
