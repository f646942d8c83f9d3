"""The op namespace: ``from tsol import op``; ``op.softmax is tsol.softmax``; ``op.pipeline``."""

from tsol.ops import *  # noqa: F401,F403
from tsol.ops import __all__ as _ops
from tsol.schedule.pipeline import pipeline  # noqa: F401

__all__ = list(_ops) + ["pipeline"]
