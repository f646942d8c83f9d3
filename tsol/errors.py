"""TSOL's error types.

Every error a user can trigger is a :class:`TSOLError` whose message names the op, the operands
(shape and dtype), the rule that failed and the fix. The subclasses also derive from the builtin
exception NumPy would raise for the same mistake, so ``except ValueError`` keeps working.
"""

from __future__ import annotations

from typing import Any, Sequence


class TSOLError(Exception):
    """Base class of every error TSOL raises on purpose."""


class ShapeError(TSOLError, ValueError):
    """Operand shapes do not fit the op's shape rule."""


class AxisError(ShapeError, IndexError):
    """An ``axis`` argument is out of range or repeated."""


class DTypeError(TSOLError, TypeError):
    """An operand dtype is not supported by the op, or dtypes cannot be combined."""


class ArgumentError(TSOLError, TypeError):
    """An argument has the wrong kind: not an array, an unknown keyword value, a bad ``out=``."""


class BackendError(TSOLError, RuntimeError):
    """Operands live on different backends, or a backend is not available."""


class TSOLNotImplementedError(TSOLError, NotImplementedError):
    """No kernel and no decomposition exists for this op on this backend and dtype."""

    def __init__(self, op: str, backend: str, dtypes: Sequence[Any], detail: str = ""):
        names = ", ".join(str(d) for d in dtypes)
        msg = (f"tsol.{op}: no kernel for backend '{backend}' and dtypes ({names}){detail}. "
               f"Fix: run tsol.coverage() to see which backends and dtypes '{op}' supports, "
               f"and cast or move the operands to one of them.")
        super().__init__(msg)
        self.op, self.backend, self.dtypes = op, backend, tuple(dtypes)


class NondeterminismError(TSOLError, RuntimeError):
    """Deterministic mode was requested but this path cannot guarantee bitwise repeatability."""


class CommError(TSOLError, RuntimeError):
    """A collective or communicator failed."""


def describe(x: Any) -> str:
    """Short operand description for messages: ``float32[4, 5]`` or ``python float 2.0``."""
    shape = getattr(x, "shape", None)
    dtype = getattr(x, "dtype", None)
    if shape is not None and dtype is not None:
        return f"{dtype}[{', '.join(str(s) for s in shape)}]"
    if isinstance(x, (bool, int, float, complex)):
        return f"python {type(x).__name__} {x!r}"
    return f"{type(x).__module__}.{type(x).__qualname__}"


def op_error(cls: type[TSOLError], op: str, problem: str, fix: str,
             operands: Sequence[Any] = ()) -> TSOLError:
    """Build ``cls`` with TSOL's message layout: op, operands, problem, fix."""
    where = f" (operands: {', '.join(describe(o) for o in operands)})" if operands else ""
    return cls(f"tsol.{op}: {problem}{where}. Fix: {fix}")
