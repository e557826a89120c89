"""Moved to :mod:`dermtrl.trainer.soreb_config`; this path still works for one release and warns."""

import sys
import warnings

import dermtrl.trainer.soreb_config as _moved

warnings.warn("dermtrl.soreb_config moved to dermtrl.trainer.soreb_config; "
              "the old import path will be removed in the next release", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
