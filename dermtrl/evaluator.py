"""Moved to :mod:`dermtrl.dermeval.evaluator`; this path still works for one release and warns."""

import sys
import warnings

import dermtrl.dermeval.evaluator as _moved

warnings.warn("dermtrl.evaluator moved to dermtrl.dermeval.evaluator; "
              "the old import path will be removed in the next release", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
