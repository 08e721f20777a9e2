"""Compiled loops of the wavelet code (``models/wavelet.py``): its adaptive order and the pixel L1 of
its prefixes. Both are sequential per image (token t's positions follow the values of tokens < t; a
prefix's error follows from the one before), so they run as per-image loops compiled by numba, images
side by side on the CPU's cores, instead of hundreds of small tensor operations per image.

Arrays are numpy, C-contiguous; the callers in ``wavelet.py`` convert from and to torch.
"""
from __future__ import annotations

import numba
import numpy as np

# numba's own thread pool: its OpenMP layer would reset the OpenMP thread count torch also uses
# (a `--threads 1` run would find torch on every core after the first kernel).
numba.config.THREADING_LAYER = "workqueue"


def use_threads(n: int) -> None:
    """Run the kernels on ``n`` threads (at most numba's pool size): the caller's torch thread count."""
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))

# Weight of the training prior against the parent's observed strength in a child's priority.
KAPPA = 0.3

_WAITING, _OPEN, _SENT = 0, 1, 2


@numba.njit(cache=True, inline="always")
def _entry(scratch: np.ndarray, bits: np.ndarray, priority: np.float32, c: int) -> np.uint64:
    """A heap entry that orders as (priority descending, index ascending) under one unsigned compare:
    a positive float32's bit pattern grows with its value; the low word holds the complemented index.
    Priorities do tie exactly in float32 (karl 0.1's torch.topk broke such ties in no fixed way)."""
    scratch[0] = priority                   # bits: a uint32 view of scratch (1,) float32
    return (np.uint64(bits[0]) << np.uint64(32)) | np.uint64(0xFFFFFFFF - c)


@numba.njit(cache=True, inline="always")
def _push(heap: np.ndarray, size: int, e: np.uint64) -> int:
    i = size
    while i > 0:
        p = (i - 1) >> 1
        if heap[p] >= e:
            break
        heap[i] = heap[p]
        i = p
    heap[i] = e
    return size + 1


@numba.njit(cache=True, inline="always")
def _pop(heap: np.ndarray, size: int) -> int:
    """Remove the top entry (the caller read it); returns the new size."""
    size -= 1
    e = heap[size]
    i = 0
    while True:
        child = 2 * i + 1
        if child >= size:
            break
        if child + 1 < size and heap[child + 1] > heap[child]:
            child += 1
        if heap[child] <= e:
            break
        heap[i] = heap[child]
        i = child
    heap[i] = e
    return size


@numba.njit(cache=True)
def _order_one(values: np.ndarray, from_tokens: bool, var: np.ndarray, kids: np.ndarray,
               by_prior: np.ndarray, roots: int, tokens: int, k: int,
               pos_out: np.ndarray, val_out: np.ndarray) -> None:
    """One image's order (``order`` below): fills pos_out (tokens, k) and val_out (tokens, k)."""
    n = var.shape[0]
    state = np.zeros(n, np.int8)
    heap = np.empty(n, np.uint64)           # a binary max-heap of the open coefficients
    scratch = np.empty(1, np.float32)
    bits = scratch.view(np.uint32)
    size = 0
    for c in range(roots):                  # the roots are open from the start, at their prior
        size = _push(heap, size, _entry(scratch, bits, var[c], c))
        state[c] = _OPEN
    wait = 0                                # next in the fixed order of waiting coefficients
    one = np.float32(1.0)
    kappa = np.float32(KAPPA)
    low = np.uint64(0xFFFFFFFF)
    for t in range(tokens):
        # Token t: the k open coefficients of highest priority; while fewer are open, waiting ones
        # in their fixed order. Children opened by this token compete from the next token on.
        for j in range(k):
            if size > 0:
                c = np.int64(low - (heap[0] & low))
                size = _pop(heap, size)
            else:
                while state[by_prior[wait]] != _WAITING:
                    wait += 1
                c = by_prior[wait]
            state[c] = _SENT
            pos_out[t, j] = c
            val_out[t, j] = values[t, j] if from_tokens else values[0, c]
        for j in range(k):
            v = val_out[t, j]
            strength = (v * v + kappa) / (one + kappa)
            for q in range(kids.shape[1]):
                c = kids[pos_out[t, j], q]
                if c >= n or state[c] != _WAITING:
                    continue
                state[c] = _OPEN
                size = _push(heap, size, _entry(scratch, bits, var[c] * strength, c))


@numba.njit(cache=True, parallel=True, nogil=True)
def order(values: np.ndarray, from_tokens: bool, var: np.ndarray, kids: np.ndarray, by_prior: np.ndarray,
          roots: int, tokens: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The adaptive order of the wavelet code (docs/design.md §4) for a batch.

    values: (B, 1, n) float32 normalised coefficients of each image (``from_tokens`` False: encoding),
    or (B, tokens, k) float32 token values (``from_tokens`` True: the decoder replays the order).
    var (n,) float32: each coefficient's training variance (its prior, > 0); kids (n, 4) int64: its
    children (n = none); by_prior (n,) int64: coefficients by descending prior, the order in which
    waiting ones are sent when fewer than k are open; roots: the first ``roots`` coefficients are
    open from the start.

    Token t takes the k open coefficients of highest priority, highest first (ties: lower index).
    Sending a coefficient of normalised value v opens its children at priority
    var x (v² + KAPPA) / (1 + KAPPA). Returns positions (B, tokens, k) int64 and values (B, tokens, k)
    float32."""
    b = values.shape[0]
    pos = np.empty((b, tokens, k), np.int64)
    val = np.empty((b, tokens, k), np.float32)
    for i in numba.prange(b):
        _order_one(values[i], from_tokens, var, kids, by_prior, roots, tokens, k, pos[i], val[i])
    return pos, val


@numba.njit(cache=True, inline="always")
def _pixel_error(rgb: np.ndarray, x: np.ndarray, r: int, c: int) -> float:
    """Σ over the 3 channels of |clamp(rgb[r, c], 0, 1) - x[r, c]|."""
    e = 0.0
    for ch in range(3):
        e += abs(min(max(rgb[r, c, ch], 0.0), 1.0) - x[r, c, ch])
    return e


@numba.njit(cache=True, inline="always")
def _add_block(rgb: np.ndarray, r0: int, c0: int, h: int, a0: float, a1: float, a2: float) -> None:
    """Add (a0, a1, a2) to the colour of every pixel of the h x h block at (r0, c0)."""
    for r in range(r0, r0 + h):
        for c in range(c0, c0 + h):
            rgb[r, c, 0] += a0
            rgb[r, c, 1] += a1
            rgb[r, c, 2] += a2


@numba.njit(cache=True)
def _prefix_l1_one(image: np.ndarray, values: np.ndarray, pos: np.ndarray, ends: np.ndarray, basis: np.ndarray,
                   mean: np.ndarray, channel: np.ndarray, side: np.ndarray, orient: np.ndarray,
                   row: np.ndarray, col: np.ndarray, out: np.ndarray) -> None:
    """One image's prefix errors (``prefix_l1`` below) into out (len(ends),)."""
    res = image.shape[1]
    x = np.empty((res, res, 3), np.float64)            # the image, pixel-major
    rgb = np.empty((res, res, 3), np.float64)          # the reconstruction so far, pixel-major
    for r in range(res):
        for c in range(res):
            for ch in range(3):
                x[r, c, ch] = image[ch, r, c]
                rgb[r, c, ch] = mean[ch]
    err = np.empty((res, res), np.float64)
    total = 0.0
    for r in range(res):
        for c in range(res):
            err[r, c] = _pixel_error(rgb, x, r, c)
            total += err[r, c]
    cells = res // 2
    mark = np.full((cells, cells), -1, np.int64)     # the prefix at which a 2 x 2 cell was last re-scored
    touched = np.empty(cells * cells, np.int64)
    k = pos.shape[1]
    sent = 0
    for s in range(ends.shape[0]):
        # Add the coefficients of tokens sent..ends[s]-1 to the reconstruction: a detail coefficient
        # (channel, orientation, i, j) at side length m adds ±value·m/R over its block of (R/m)²
        # pixels, the sign set by the quadrant (orthonormal Haar; the inverse of ``haar_forward``); a
        # colour mean adds value/R everywhere. A code channel adds along its basis colour.
        for t in range(sent, ends[s]):
            for j in range(k):
                p = pos[t, j]
                ch, m, v = channel[p], side[p], values[t, j]
                b0, b1, b2 = basis[0, ch], basis[1, ch], basis[2, ch]
                if m == 0:
                    a = v / res
                    _add_block(rgb, 0, 0, res, a * b0, a * b1, a * b2)
                    continue
                a = v * m / res
                h = res // (2 * m)
                r0, c0 = row[p] * 2 * h, col[p] * 2 * h
                o = orient[p]
                # Quadrant signs (top-left +; top-right, bottom-left, bottom-right per orientation).
                tr = a if o == 1 else -a
                bl = -a if o == 1 else a if o == 0 else -a
                br = a if o == 2 else -a
                _add_block(rgb, r0, c0, h, a * b0, a * b1, a * b2)
                _add_block(rgb, r0, c0 + h, h, tr * b0, tr * b1, tr * b2)
                _add_block(rgb, r0 + h, c0, h, bl * b0, bl * b1, bl * b2)
                _add_block(rgb, r0 + h, c0 + h, h, br * b0, br * b1, br * b2)
        # Refresh the error of every pixel those coefficients touched, once: mark the touched 2 x 2
        # cells (the smallest block a coefficient has), then re-score their pixels.
        count = 0
        full = False
        for t in range(sent, ends[s]):
            for j in range(k):
                p = pos[t, j]
                m = side[p]
                if m <= 1:
                    full = True
                    break
                size = cells // m
                r0, c0 = row[p] * size, col[p] * size
                for r in range(r0, r0 + size):
                    for c in range(c0, c0 + size):
                        if mark[r, c] != s:
                            mark[r, c] = s
                            touched[count] = r * cells + c
                            count += 1
            if full:
                break
        if full:
            count = cells * cells
            for i in range(count):
                touched[i] = i
        for i in range(count):
            r0, c0 = 2 * (touched[i] // cells), 2 * (touched[i] % cells)
            for r in range(r0, r0 + 2):
                for c in range(c0, c0 + 2):
                    e = _pixel_error(rgb, x, r, c)
                    total += e - err[r, c]
                    err[r, c] = e
        sent = ends[s]
        out[s] = total / (3 * res * res)


@numba.njit(cache=True, parallel=True, nogil=True)
def prefix_l1(x: np.ndarray, values: np.ndarray, pos: np.ndarray, ends: np.ndarray, basis: np.ndarray,
              mean: np.ndarray, channel: np.ndarray, side: np.ndarray, orient: np.ndarray, row: np.ndarray,
              col: np.ndarray) -> np.ndarray:
    """Pixel L1 of the clamped reconstruction from the first ``ends[s]`` tokens, for each s.

    x: images (B, 3, R, R) float32 in [0, 1]; values: the tokens' coefficients in the code's colour
    space, unnormalised (B, T, k) float32, at Haar positions pos (B, T, k) int64 (the
    ``haar_forward`` layout); ends: ascending token counts (S,) int64, at most T; basis (3, 3) and
    mean (3,) float64: pixels = basis @ colour-space values + mean. channel, side, orient, row, col
    (n,) int64 describe each Haar position (side 0: a colour mean). Returns (B, S) float64.

    The reconstruction is updated token by token and only the pixels a new coefficient touches are
    re-scored, so a whole rate–distortion curve costs about as much as a few full reconstructions."""
    b = x.shape[0]
    out = np.empty((b, ends.shape[0]), np.float64)
    for i in numba.prange(b):
        _prefix_l1_one(x[i], values[i], pos[i], ends, basis, mean, channel, side, orient, row, col, out[i])
    return out
