"""Moved to :mod:`dermtrl.dermeval.eval_job`; this path still works for one release and warns."""

import sys
import warnings

import dermtrl.dermeval.eval_job as _moved

warnings.warn("dermtrl.eval_job moved to dermtrl.dermeval.eval_job; "
              "the old import path will be removed in the next release", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
