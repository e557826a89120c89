"""Moved to :mod:`dermtrl.llm.cache`; this path still works for one release and warns."""

import sys
import warnings

import dermtrl.llm.cache as _moved

warnings.warn("dermtrl.cache moved to dermtrl.llm.cache; "
              "the old import path will be removed in the next release", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
