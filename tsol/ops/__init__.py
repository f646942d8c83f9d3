"""Every op definition, one module per family. Importing this registers them all."""

from tsol.ops import elementwise, normalization, reduction, softmax
from tsol.ops.elementwise import *  # noqa: F401,F403
from tsol.ops.normalization import *  # noqa: F401,F403
from tsol.ops.reduction import *  # noqa: F401,F403
from tsol.ops.softmax import *  # noqa: F401,F403

FAMILIES = (elementwise, reduction, softmax, normalization)

__all__ = [name for family in FAMILIES for name in family.__all__]
