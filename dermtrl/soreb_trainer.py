"""Moved to :mod:`dermtrl.trainer.soreb_trainer`; this path still works for one release and warns."""

import sys
import warnings

import dermtrl.trainer.soreb_trainer as _moved

warnings.warn("dermtrl.soreb_trainer moved to dermtrl.trainer.soreb_trainer; "
              "the old import path will be removed in the next release", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
