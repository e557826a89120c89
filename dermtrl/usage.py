"""Moved to :mod:`dermtrl.llm.usage`; this path still works for one release and warns."""

import sys
import warnings

import dermtrl.llm.usage as _moved

warnings.warn("dermtrl.usage moved to dermtrl.llm.usage; "
              "the old import path will be removed in the next release", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
