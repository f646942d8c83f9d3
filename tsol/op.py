"""The op namespace: ``from tsol import op``; ``op.softmax is tsol.softmax``."""

from tsol.ops import *  # noqa: F401,F403
from tsol.ops import __all__  # noqa: F401
