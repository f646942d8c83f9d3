"""Attention: flash_attention (and PyTorch's scaled_dot_product_attention name for it) and rope.

``flash_attention`` computes ``softmax(Q K^T * scale + mask) V`` (an optional additive mask, a
causal one built in) with an online softmax over key tiles, so no ``S x Skv`` score matrix ever
exists. ``rope`` applies rotary position embeddings.
Both compute half types (float16, bfloat16) in float32.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import ml_dtypes
import numpy as np

import tsol
from tsol import dtypes
from tsol.errors import ArgumentError, DTypeError, ShapeError, op_error
from tsol.ops.base import Meta, defop
from tsol.ops.rules import broadcasts_to, require_dtypes, require_float, sum_to_shape

__all__ = ["flash_attention", "scaled_dot_product_attention", "rope"]


def _real(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(
        x, (bool, np.bool_))


def _positive_int(op: str, name: str, value: Any, metas: Sequence[Any]) -> int | None:
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) \
            or value <= 0:
        raise op_error(ArgumentError, op, f"{name} must be a positive int or None, got "
                       f"{value!r}", f"pass {name}=64 (or leave it None for the tuned default)",
                       metas)
    return int(value)


# --- flash_attention ----------------------------------------------------------------------

def _attention_normalize(metas: Sequence[Meta], *, causal: Any, scale: Any, block_q: Any,
                         block_k: Any) -> dict[str, Any]:
    op = "flash_attention"
    if not isinstance(causal, (bool, np.bool_)):
        raise op_error(ArgumentError, op, f"causal must be True or False, got {causal!r}",
                       "pass causal=True or causal=False", metas)
    if scale is None:
        d = metas[0].shape[-1] if metas[0].ndim else 0
        scale = 1.0 / math.sqrt(d) if d > 0 else 1.0
    elif not _real(scale):
        raise op_error(ArgumentError, op, f"scale must be a real number or None, got {scale!r}",
                       "pass a float such as scale=0.125, or None for 1/sqrt(head_dim)", metas)
    return {"causal": bool(causal), "scale": float(scale),
            "block_q": _positive_int(op, "block_q", block_q, metas),
            "block_k": _positive_int(op, "block_k", block_k, metas)}


def _attention_meta(q: Meta, k: Meta, v: Meta, mask: Meta | None = None, **attrs: Any
                    ) -> Meta:
    op, operands = "flash_attention", (q, k, v)
    if any(m.ndim != 4 for m in operands):
        raise op_error(ShapeError, op, f"q, k and v must be 4-d [batch, heads, seq, head_dim]; "
                       f"got shapes {q.shape}, {k.shape} and {v.shape}",
                       "reshape them to [B, H, S, D] (x[None] adds a batch or head axis)",
                       operands)
    require_float(op, *operands)
    if not q.dtype == k.dtype == v.dtype:
        raise op_error(DTypeError, op, "q, k and v must share one dtype",
                       "cast them to one dtype with tsol.astype", operands)
    (b, h, _, d), (bk, hkv, skv, dk), (bv, hv, sv, dv) = q.shape, k.shape, v.shape
    problem = None
    if not b == bk == bv:
        problem = f"batch sizes differ (q {b}, k {bk}, v {bv})"
    elif hkv != hv or skv != sv:
        problem = f"k {k.shape} and v {v.shape} differ in heads or sequence length"
    elif hkv == 0 and h > 0 or hkv > 0 and h % hkv:
        problem = (f"q's {h} heads are not a multiple of k/v's {hkv} heads (grouped-query "
                   f"attention needs Hkv to divide H)")
    elif d != dk:
        problem = f"q's head_dim {d} differs from k's {dk}"
    if problem:
        raise op_error(ShapeError, op, problem, "pass q [B, H, S, D], k [B, Hkv, Skv, D] and "
                       "v [B, Hkv, Skv, Dv] with Hkv dividing H", operands)
    if mask is not None:
        _check_mask(mask, (b, h, q.shape[2], skv), operands)
    return Meta((b, h, q.shape[2], dv), q.dtype)


def _check_mask(mask: Meta, scores: tuple[int, ...], operands: Sequence[Meta]) -> None:
    """The mask rule: a float array broadcastable to the [B, H, S, Skv] scores."""
    op, operands = "flash_attention", (*operands, mask)
    if mask.weak:
        raise op_error(ArgumentError, op, "mask must be an array, not a Python scalar",
                       "pass an array broadcastable to [B, H, S, Skv], or no mask", operands)
    if mask.dtype not in dtypes.FLOATS:
        raise op_error(DTypeError, op, f"mask must be a float additive mask (0 keeps a key, "
                       f"-inf drops it), got {mask.dtype}", "convert a boolean keep-mask with "
                       "np.where(keep, 0.0, -np.inf).astype(q.dtype)", operands)
    if mask.ndim > 4 or not broadcasts_to(mask.shape, scores):
        raise op_error(ShapeError, op, f"mask {mask.shape} does not broadcast to the scores "
                       f"[B, H, S, Skv] = {list(scores)}", "pass a mask of shape [S, Skv], "
                       "[B, 1, S, Skv] or [B, H, S, Skv] (1 on any axis broadcasts, e.g. "
                       "[B, 1, 1, Skv] for key padding)", operands)


def causal_keep(s: int, skv: int) -> np.ndarray:
    """Boolean [S, Skv] mask of the keys query i sees: j <= i + (Skv - S), bottom-right."""
    return np.arange(skv)[None, :] <= np.arange(s)[:, None] + (skv - s)


def _attention_ref(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None = None,
                   *, causal: bool, scale: float, **_: Any) -> np.ndarray:
    group = q.shape[1] // max(k.shape[1], 1)
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    s = np.matmul(q, np.swapaxes(k, -1, -2)) * scale
    if mask is not None:
        s = s + mask
    if causal:
        s = np.where(causal_keep(q.shape[2], k.shape[2]), s, -np.inf)
    m = np.max(s, axis=-1, keepdims=True, initial=-np.inf)
    with np.errstate(invalid="ignore"):         # NaN or +inf scores make their row NaN
        p = np.exp(s - np.where(m == -np.inf, 0.0, m))
    total = p.sum(axis=-1, keepdims=True)
    o = np.matmul(p, v) / np.where(total == 0, 1.0, total)
    return np.where(total == 0, 0.0, o)           # a row that sees no key (all -inf) gives zeros


def _visible_pairs(s: int, skv: int, causal: bool) -> int:
    if not causal:
        return s * skv
    return int(np.clip(np.arange(s) + (skv - s) + 1, 0, skv).sum())


def _attention_cost(q: Meta, k: Meta, v: Meta, mask: Meta | None = None, *, out: Meta,
                    causal: bool, **_: Any) -> tuple[float, float]:
    b, h, s, d = q.shape
    pairs = b * h * _visible_pairs(s, k.shape[2], causal)
    # Q K^T and P V multiply-adds, plus max, exp, sum and rescale per score (and the mask's add).
    flops = pairs * (2.0 * d + 2.0 * v.shape[3] + 5.0 + (mask is not None))
    moved = q.nbytes + k.nbytes + v.nbytes + out.nbytes + (0 if mask is None else mask.nbytes)
    return flops, float(moved)


def _attention_vjp(g: Any, q: Any, k: Any, v: Any, mask: Any = None, *, out: Any,
                   causal: bool, scale: float, **_: Any) -> tuple[Any, Any, Any, Any]:
    """Non-fused backward: recomputes P = softmax(Q K^T * scale + mask) with TSOL ops
    (O(S x Skv)). The mask's cotangent is dS, the softmax gradient of the scores, summed over
    the axes the mask broadcasts along.

    GQA folds the group of query heads sharing a kv head into the query axis, so k and v keep
    their own shape and the sums over the group come out of the matmuls.
    """
    b, h, s, d = q.shape
    hkv, skv, dv = k.shape[1], k.shape[2], v.shape[3]
    group = h // hkv
    qg = tsol.reshape(q, (b, hkv, group * s, d))
    gg = tsol.reshape(g, (b, hkv, group * s, dv))
    kt = tsol.transpose(k, (0, 1, 3, 2))
    scores = tsol.multiply(tsol.matmul(qg, kt), scale)
    if mask is not None:
        p = _masked_probs(scores, mask, causal, (b, hkv, group, s, skv), q.dtype)
    elif causal:
        # A finite bias instead of -inf keeps rows that see no key finite; ``keep`` (a constant
        # of the shapes) then zeroes them, as the forward pass does.
        keep = np.tile(causal_keep(s, skv), (group, 1)).astype(q.dtype)
        low = float(ml_dtypes.finfo(q.dtype).min) / 4
        scores = tsol.add(scores, (1.0 - keep) * np.asarray(low, q.dtype))
        p = tsol.multiply(tsol.softmax(scores, axis=-1), keep)
    else:
        p = tsol.softmax(scores, axis=-1)
    dv_ = tsol.matmul(tsol.transpose(p, (0, 1, 3, 2)), gg)
    dp = tsol.matmul(gg, tsol.transpose(v, (0, 1, 3, 2)))
    row = tsol.sum(tsol.multiply(dp, p), axis=-1, keepdims=True)
    dscores = tsol.multiply(p, tsol.subtract(dp, row))
    ds = tsol.multiply(dscores, scale)
    dq = tsol.reshape(tsol.matmul(ds, k), (b, h, s, d))
    dk = tsol.matmul(tsol.transpose(ds, (0, 1, 3, 2)), qg)
    dmask = None
    if mask is not None:
        dmask = sum_to_shape(tsol.reshape(dscores, (b, h, s, skv)), tuple(mask.shape))
        if dmask.dtype != mask.dtype:
            dmask = tsol.astype(dmask, mask.dtype)
    return dq, dk, dv_, dmask


def _masked_probs(scores: Any, mask: Any, causal: bool, grouped: tuple[int, ...],
                  dt: np.dtype) -> Any:
    """softmax(scores + mask) of the [B, Hkv, G*S, Skv] grouped scores, rows whose every key
    is masked (-inf, or by ``causal``) zeroed as in the forward pass.

    Scores and mask meet in 5-d [B, Hkv, G, S, Skv], where a mask broadcast over heads (or
    given per query head) lines up with the folded query axis. -inf entries become a finite
    low value, so a fully masked row stays finite until ``alive`` zeroes it.
    """
    b, hkv, group, s, skv = grouped
    bias = mask if mask.dtype == dt else tsol.astype(mask, dt)
    if causal:
        bias = tsol.add(bias, np.where(causal_keep(s, skv), 0.0, -np.inf).astype(dt))
    mb, mh, ms, mk = (1,) * (4 - bias.ndim) + tuple(bias.shape)
    heads = (1, 1) if mh == 1 else (hkv, group)
    bias = tsol.reshape(bias, (mb, *heads, ms, mk))
    top = tsol.max(bias, axis=-1, keepdims=True)
    alive = tsol.subtract(1.0, tsol.astype(tsol.equal(top, -np.inf), dt))
    low = float(ml_dtypes.finfo(dt).min) / 4
    x = tsol.add(tsol.reshape(scores, grouped), tsol.maximum(bias, np.asarray(low, dt)))
    p = tsol.multiply(tsol.softmax(x, axis=-1), alive)
    return tsol.reshape(p, (b, hkv, group * s, skv))


@defop(family="attention", inputs=("q", "k", "v", "mask"), meta=_attention_meta,
       reference=_attention_ref, vjp=_attention_vjp, cost=_attention_cost,
       normalize=_attention_normalize)
def flash_attention(q, k, v, mask=None, *, causal=False, scale=None, block_q=None, block_k=None,
                    out=None):
    """Attention ``softmax(q k^T * scale + mask) v`` without materializing the score matrix.

    - ``q``: [B, H, S, D]; ``k``: [B, Hkv, Skv, D]; ``v``: [B, Hkv, Skv, Dv]. All one float
      dtype (float64, float32, float16, bfloat16; half types compute in float32). Any strides.
      The result is [B, H, S, Dv] in that dtype.
    - Grouped-query / multi-query attention when Hkv divides H: query head ``h`` reads kv head
      ``h // (H // Hkv)``.
    - ``mask``: None, or an additive float mask (any float dtype, converted to the compute
      type) broadcastable to the [B, H, S, Skv] scores: [S, Skv], [B, 1, S, Skv],
      [B, H, S, Skv], [B, 1, 1, Skv] for key padding, ... It is added to the scaled scores
      before the softmax: 0 keeps a key, ``-inf`` drops it, finite values bias it (ALiBi,
      relative positions). A query whose every key is ``-inf`` gives zeros (as under
      ``causal``); a NaN in the mask, or ``+inf``, makes its query's row NaN. Differentiable:
      the mask's cotangent is the softmax gradient of the scores, summed over its broadcast
      axes. float16/bfloat16 masks are widened to float32 in their own shape by the CPU
      kernel; CUDA kernels read any dtype as it is.
    - ``scale``: multiplies the scores; None means ``1 / sqrt(D)``.
    - ``causal``: query ``i`` sees keys ``j <= i + (Skv - S)``: the mask is aligned to the
      bottom-right corner, as in FlashAttention-2 and PyTorch's ``causal_lower_right`` (so with
      a KV cache the last query sees every key). PyTorch's ``is_causal=True`` is top-left
      aligned instead; ``scaled_dot_product_attention`` below follows PyTorch. When S > Skv the
      first ``S - Skv`` queries see no key; such rows (and every row when Skv == 0) are zeros.
      It combines with ``mask`` (both apply) and is cheaper than the same causal pattern given
      as a mask: tiles above the diagonal are skipped.
    - ``block_q``, ``block_k``: query and key tile sizes (positive ints; None picks them). The
      kernel runs an online softmax over key tiles (running max, running sum, rescaled
      accumulator), so its memory is O(S * D) per head, and causal runs skip tiles above the
      diagonal. Summation order depends on the tiles, never on the thread count.
    - Raises ShapeError for a rank other than 4, batch or sequence sizes that differ, Hkv not
      dividing H, a head_dim mismatch, or a mask that does not broadcast to [B, H, S, Skv];
      DTypeError for non-float or mixed q/k/v dtypes or a non-float mask; ArgumentError for a
      bad ``causal``, ``scale`` or block size, a Python scalar as mask, or a non-array operand.

    >>> import numpy as np, tsol
    >>> q = np.ones((1, 2, 3, 4), np.float32)
    >>> v = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
    >>> tsol.flash_attention(q, q, v, causal=True)[0, 0]
    array([[0., 1., 2., 3.],
           [2., 3., 4., 5.],
           [4., 5., 6., 7.]], dtype=float32)
    >>> pad = np.array([0.0, 0.0, -np.inf], np.float32)     # the last key is padding
    >>> tsol.flash_attention(q, q, v, pad)[0, 0]
    array([[2., 3., 4., 5.],
           [2., 3., 4., 5.],
           [2., 3., 4., 5.]], dtype=float32)
    """
    ...


def scaled_dot_product_attention(query: Any, key: Any, value: Any, attn_mask: Any = None,
                                 dropout_p: float = 0.0, is_causal: bool = False,
                                 scale: float | None = None, enable_gqa: bool = False) -> Any:
    """PyTorch's ``torch.nn.functional.scaled_dot_product_attention``, run by flash_attention.

    Arguments and semantics are PyTorch's: ``query`` [B, H, L, E], ``key`` [B, Hkv, S, E],
    ``value`` [B, Hkv, S, Ev]; ``scale`` None means ``1 / sqrt(E)``; Hkv != H needs
    ``enable_gqa=True``. ``is_causal=True`` is top-left aligned as in PyTorch (query ``i`` sees
    keys ``j <= i``), which differs from ``flash_attention(causal=True)`` when L != S.

    Not supported (ArgumentError): ``attn_mask`` (use ``is_causal``, or flash_attention's
    additive ``mask``) and ``dropout_p != 0`` (apply dropout outside, or pass 0.0 at
    inference).

    >>> import numpy as np, tsol
    >>> q = np.zeros((1, 1, 2, 4), np.float32)
    >>> v = np.arange(8, dtype=np.float32).reshape(1, 1, 2, 4)
    >>> tsol.scaled_dot_product_attention(q, q, v)[0, 0]
    array([[2., 3., 4., 5.],
           [2., 3., 4., 5.]], dtype=float32)
    """
    op = "scaled_dot_product_attention"
    operands = (query, key, value)
    if attn_mask is not None:
        raise op_error(ArgumentError, op, "attn_mask is not supported",
                       "use is_causal=True for a causal mask, or pass an additive float mask "
                       "to tsol.flash_attention(q, k, v, mask)", operands)
    if not _real(dropout_p) or dropout_p != 0:
        raise op_error(ArgumentError, op, f"dropout_p={dropout_p!r} is not supported",
                       "pass dropout_p=0.0 (apply tsol.dropout to the output if needed)",
                       operands)
    shapes = [tuple(getattr(x, "shape", ())) for x in operands]
    if any(len(sh) != 4 for sh in shapes):
        raise op_error(ShapeError, op, f"query, key and value must be 4-d [batch, heads, seq, "
                       f"dim]; got shapes {shapes[0]}, {shapes[1]} and {shapes[2]}",
                       "reshape them to [B, H, L, E] (x[None] adds an axis)", operands)
    if shapes[0][1] != shapes[1][1] and not enable_gqa:
        raise op_error(ShapeError, op, f"query has {shapes[0][1]} heads and key "
                       f"{shapes[1][1]}", "pass enable_gqa=True for grouped-query attention",
                       operands)
    if not is_causal:
        return flash_attention(query, key, value, causal=False, scale=scale)
    q_len, kv_len = shapes[0][2], shapes[1][2]
    if q_len <= kv_len:
        # Top-left: query i sees keys 0..i, so keys past L are never seen, and on the first L
        # keys the top-left and bottom-right masks agree.
        head = (slice(None), slice(None), slice(0, q_len))
        return flash_attention(query, tsol.slice(key, head), tsol.slice(value, head),
                               causal=True, scale=scale)
    # L > S: the first S queries form a square causal problem, the rest see every key.
    top = tsol.slice(query, (slice(None), slice(None), slice(0, kv_len)))
    rest = tsol.slice(query, (slice(None), slice(None), slice(kv_len, None)))
    return tsol.concat([flash_attention(top, key, value, causal=True, scale=scale),
                        flash_attention(rest, key, value, causal=False, scale=scale)], axis=2)


# --- rope ---------------------------------------------------------------------------------

def _rope_normalize(metas: Sequence[Meta], *, theta: Any) -> dict[str, Any]:
    if not _real(theta) or not 0 < float(theta) < math.inf:
        raise op_error(ArgumentError, "rope", f"theta must be a positive finite number, got "
                       f"{theta!r}", "pass theta=10000.0 (LLaMA) or another base", metas)
    return {"theta": float(theta)}


def _rope_meta(x: Meta, positions: Meta | None, *, theta: float) -> Meta:
    op = "rope"
    operands = [m for m in (x, positions) if m is not None]
    require_float(op, x)
    if x.ndim < (1 if positions is not None else 2) or x.shape[-1] % 2:
        raise op_error(ShapeError, op, f"x must be [..., S, D] with an even D, got {x.shape}",
                       "pass an even last dimension (pairs (2i, 2i+1) rotate together)",
                       operands)
    if positions is not None:
        if positions.weak:
            raise op_error(ArgumentError, op, "positions must be an integer array, not a "
                           "Python scalar", "pass np.asarray(p) or an array of positions",
                           operands)
        require_dtypes(op, [positions], dtypes.INTEGERS, "an integer dtype for positions")
        lead = x.shape[:-1]
        if not broadcasts_to(positions.shape, lead):
            raise op_error(ShapeError, op, f"positions {positions.shape} do not broadcast to "
                           f"x.shape[:-1] = {lead}", "pass positions of shape [S] or "
                           "x.shape[:-1] (or broadcastable to it)", operands)
    return Meta(x.shape, x.dtype)


def rope_angles(positions: np.ndarray, d: int, theta: float) -> np.ndarray:
    """float64 angles ``pos * theta**(-2i/D)`` with shape positions.shape + (D/2,)."""
    inv_freq = theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    return positions.astype(np.float64)[..., None] * inv_freq


def default_positions(shape: tuple[int, ...]) -> np.ndarray:
    """Positions 0..S-1 along axis -2 of an [..., S, D] input, shaped [S, 1]-broadcastable."""
    return np.arange(shape[-2], dtype=np.int64)


def _rope_ref(x: np.ndarray, positions: np.ndarray | None, *, theta: float) -> np.ndarray:
    pos = default_positions(x.shape) if positions is None else np.asarray(positions)
    ang = rope_angles(pos, x.shape[-1], theta)
    c, s = np.cos(ang), np.sin(ang)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty(np.broadcast_shapes(x.shape), np.float64)
    out[..., 0::2] = x0 * c - x1 * s
    out[..., 1::2] = x0 * s + x1 * c
    return out


def _rope_vjp(g: Any, x: Any, positions: Any, *, out: Any, theta: float) -> tuple[Any, None]:
    # The rotation is orthogonal: its transpose rotates by the negative angle.
    pos = default_positions(x.shape) if positions is None else positions
    return tsol.rope(g, theta=theta, positions=-pos), None


def _rope_cost(x: Meta, positions: Meta | None, *, out: Meta, theta: float
               ) -> tuple[float, float]:
    moved = x.nbytes + out.nbytes + (positions.nbytes if positions is not None else 0)
    return 3.0 * x.size, float(moved)


@defop(family="attention", inputs=("x", "positions"), meta=_rope_meta, reference=_rope_ref,
       vjp=_rope_vjp, cost=_rope_cost, normalize=_rope_normalize)
def rope(x, *, theta=10000.0, positions=None, out=None):
    """Rotary position embedding (RoPE) over the last dimension, in the interleaved layout.

    Layout: the original LLaMA (and RoFormer) one. For each pair ``(x[..., 2i], x[..., 2i+1])``
    with angle ``a = pos * theta ** (-2i / D)``::

        out[..., 2i]   = x[..., 2i] * cos(a) - x[..., 2i+1] * sin(a)
        out[..., 2i+1] = x[..., 2i] * sin(a) + x[..., 2i+1] * cos(a)

    (The "rotate-half" layout of GPT-NeoX / Hugging Face pairs ``i`` with ``i + D/2`` instead;
    permute the last axis to convert.) Angles and their cos/sin are computed in float64.

    - ``x``: [..., S, D] with D even; float64, float32, float16 or bfloat16 (half types compute
      in float32). The result has x's shape and dtype.
    - ``positions``: None means ``0..S-1`` along axis -2; else an integer array broadcastable to
      ``x.shape[:-1]`` (e.g. [S], or [B, S] for per-sequence offsets; negative values rotate
      the other way). With explicit positions x may be 1-d.
    - ``theta``: the frequency base, a positive number.
    - Raises ShapeError for an odd D, a 0-d input (or a 1-d one without positions), or
      positions that do not broadcast; DTypeError for non-float x or non-integer positions;
      ArgumentError for a bad theta or a Python scalar as positions.

    >>> import numpy as np, tsol
    >>> x = np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)
    >>> tsol.rope(x, positions=np.array([0, 1])).round(4)
    array([[1.    , 0.    ],
           [0.5403, 0.8415]], dtype=float32)
    """
    ...
