"""Moved to :mod:`dermtrl.llm.concurrency`; this path still works for one release and warns."""

import sys
import warnings

import dermtrl.llm.concurrency as _moved

warnings.warn("dermtrl.concurrency moved to dermtrl.llm.concurrency; "
              "the old import path will be removed in the next release", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
