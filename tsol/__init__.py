"""TSOL, the Tessera Standard Operator Library: NumPy-style ops on hand-written tile kernels.

>>> import numpy as np, tsol
>>> tsol.softmax(np.array([0.0, 1.0], np.float32)).round(3)
array([0.269, 0.731], dtype=float32)

Every op is ``tsol.<name>`` and ``tsol.op.<name>``; ``tsol.coverage()`` lists ops and kernels.
Importing ``tsol`` loads no compiler or GPU stack: kernels load on first use.
"""

__version__ = "0.1.0"

from tsol import (  # noqa: E402
                         config,
                         dtypes,
                         errors,
                         graph,  # noqa: E402
                         op,  # noqa: E402
)
from tsol.backends import available as available_backends  # noqa: E402
from tsol.dtypes import (  # noqa: E402
                         bfloat16,
                         bool_,
                         float16,
                         float32,
                         float64,
                         int8,
                         int16,
                         int32,
                         int64,
                         uint8,
                         uint16,
                         uint32,
                         uint64,
)
from tsol.errors import (  # noqa: E402
                         ArgumentError,
                         AxisError,
                         BackendError,
                         CommError,
                         DTypeError,
                         NondeterminismError,
                         ShapeError,
                         TSOLError,
                         TSOLNotImplementedError,
)
from tsol.ops import *  # noqa: E402,F401,F403
from tsol.ops import __all__ as _op_names  # noqa: E402
from tsol.registry import coverage  # noqa: E402
from tsol.schedule.autodiff import grad, value_and_grad, vjp  # noqa: E402
from tsol.schedule.compiled import jit  # noqa: E402
from tsol.schedule.pipeline import pipeline  # noqa: E402
from tsol.schedule.tune import autotune  # noqa: E402

__all__ = list(_op_names) + [
    "config", "dtypes", "errors", "op", "coverage", "available_backends", "graph", "jit",
    "pipeline", "grad", "value_and_grad", "vjp",
    "autotune",
    "bfloat16", "float16", "float32", "float64", "bool_", "int8", "int16", "int32", "int64",
    "uint8", "uint16", "uint32", "uint64", "TSOLError", "ShapeError", "AxisError", "DTypeError",
    "ArgumentError", "BackendError", "TSOLNotImplementedError", "NondeterminismError",
    "CommError",
]

from tsol.schedule import tune as _tune  # noqa: E402

_tune.install_from_config()   # TSOL_AUTOTUNE=1 turns measuring selection on
