"""Classic image-complexity measures, the baselines KC is compared against (a named registry).

**One convention for every measure.** Each takes the image exactly as the model sees it: uint8
(R, R, 3) sRGB at the model resolution (the whole image squashed to R x R by ``images.load_for_model``;
R = 64 for the shipped models). KC and every baseline thus describe the *same pixels*: a difference in
how well they track human ratings is the measure's, not the resolution's. (A measure computed on a
256-px image would see detail the model never saw, so it could win or lose for that reason alone.) The
fixed parameters below (Canny σ, segmentation scale, pooling widths) are in pixels of that image.
Luminance is the ITU-R BT.601 luma of the 8-bit values, Y' = 0.299 R' + 0.587 G' + 0.114 B' (Pillow's
``convert("L")``, uint8 0..255); measures of colour use all three channels as stated per measure.

JPEG-75 bytes/pixel is the classic complexity proxy (docs/design.md §5). Codec sizes are **bytes per pixel** (file bytes incl. headers / (H·W)), encoded in memory with Pillow.

============================  ======================================================================
name (column)                 measure
============================  ======================================================================
``jpeg_bpp``                  JPEG quality 75 bytes/pixel
``png_bpp``                   PNG bytes/pixel
``webp_bpp``                  WebP lossless bytes/pixel (libwebp's fastest lossless preset, level 0)
``gif_bpp``                   GIF (LZW) bytes/pixel of the 256-colour palette image (fast octree)
``edge_density``              share of Canny edge pixels, 0..1
``spatial_information``       ITU-T P.910 SI: std of the Sobel gradient magnitude of luma (0..255 units)
``subband_entropy``           Rosenholtz et al. 2007 subband entropy (bits)
``feature_congestion``        Rosenholtz et al. 2007 Feature Congestion clutter (their units)
``fh_regions``                number of Felzenszwalb–Huttenlocher segments
``colourfulness``             Hasler & Süsstrunk 2003 M (0..255 units)
``luminance_entropy``         Shannon entropy of the 256-bin luma histogram (bits, 0..8)
============================  ======================================================================

Every function raises ``TypeError`` for a non-uint8 array and ``ValueError`` for a shape other than
(H, W, 3) (the codecs also take (H, W) grey).
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image
from scipy import fft as sp_fft
from scipy import ndimage
from skimage.feature import canny
from skimage.segmentation import felzenszwalb

from karl_cli.errors import UsageError


# --- shared conversions ----------------------------------------------------------------------------
def _frozen(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False          # shared by every call through an lru_cache
    return a


def _checked(array: np.ndarray, grey_ok: bool = False) -> np.ndarray:
    a = np.asarray(array)
    if a.dtype != np.uint8:
        raise TypeError(f"expected a uint8 array, got {a.dtype}")
    if (a.ndim == 3 and a.shape[2] == 3) or (grey_ok and a.ndim == 2):
        return a
    raise ValueError(f"expected an {'(H, W) or ' if grey_ok else ''}(H, W, 3) array, got shape {a.shape}")


def _as_image(array: np.ndarray) -> Image.Image:
    a = _checked(array, grey_ok=True)
    return Image.fromarray(a, "L" if a.ndim == 2 else "RGB")


def luma(array: np.ndarray) -> np.ndarray:
    """BT.601 luma of an sRGB uint8 (H, W, 3) image: uint8 (H, W), Pillow's ``convert("L")``."""
    return np.asarray(Image.fromarray(_checked(array), "RGB").convert("L"))


def _bytes_per_pixel(img: Image.Image, **save_args) -> float:
    buf = io.BytesIO()
    img.save(buf, **save_args)
    return buf.tell() / float(img.width * img.height)


# --- compression -----------------------------------------------------------------------------------
def jpeg_bpp(array: np.ndarray, quality: int = 75) -> float:
    """JPEG bytes per pixel at ``quality`` (Pillow/libjpeg defaults otherwise: 4:2:0, baseline).

    JPEG-75 file size is the classic complexity proxy (e.g. Machado et al. 2015, "Computerized
    measures of visual complexity", Acta Psychologica 160:43-57; DESIGN.md §3-4)."""
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"JPEG quality must lie in 1..100, got {quality}")
    return _bytes_per_pixel(_as_image(array), format="JPEG", quality=int(quality))


def png_bpp(array: np.ndarray) -> float:
    """PNG bytes per pixel (lossless DEFLATE, zlib level 6, Pillow's default filter choice)."""
    return _bytes_per_pixel(_as_image(array), format="PNG")


WEBP_METHOD, WEBP_EFFORT = 0, 0


def webp_bpp(array: np.ndarray) -> float:
    """WebP **lossless** bytes per pixel (libwebp via Pillow, ``lossless=True``) at libwebp's fastest
    lossless preset, level 0 (``cwebp -lossless -z 0``: ``method=0``, ``quality=0``, the effort of
    the search for the best transforms and backward references). Lossless, so it measures the
    redundancy of the exact pixels (like PNG), with a stronger coder (spatial prediction, colour
    cache, LZ77 + entropy coding; Google, WebP Lossless Bitstream Specification, RFC 9649 §3).

    Level 0 rather than Pillow's default (method 4, effort 80): ~30x faster (0.3 vs 9 ms per
    64-px image on a 2-core EPYC), for files ~8% larger on Savoias images, whose order stays
    nearly the same (Spearman ρ 0.99 between the two sizes on 100 Savoias dev images)."""
    return _bytes_per_pixel(_as_image(array), format="WEBP", lossless=True, method=WEBP_METHOD, quality=WEBP_EFFORT)


def _palette_image(img: Image.Image) -> Image.Image:
    """An RGB image as a palette ("P") image of at most 256 colours: its own colours, exactly, when it
    has no more than 256; else Pillow's fast octree quantizer (``Quantize.FASTOCTREE``; after
    Gervautz & Purgathofer 1988), no dithering."""
    if img.getcolors(256) is None:
        return img.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    a = np.asarray(img)
    rgb = (a[..., 0].astype(np.uint32) << 16) | (a[..., 1].astype(np.uint32) << 8) | a[..., 2]
    colours, index = np.unique(rgb.ravel(), return_inverse=True)
    out = Image.fromarray(index.reshape(a.shape[:2]).astype(np.uint8), "P")
    out.putpalette(np.stack([colours >> 16, colours >> 8, colours], axis=1).astype(np.uint8).ravel().tobytes())
    return out


def gif_bpp(array: np.ndarray) -> float:
    """GIF bytes per pixel: the image as a palette image of at most 256 colours (its own colours when
    it has at most 256, else an adaptive palette from Pillow's fast octree quantizer; no dithering:
    dithering noise would add complexity that is not in the image), LZW-coded by Pillow (GIF89a;
    Welch 1984, "A technique for high-performance data compression", IEEE Computer 17(6)). The
    palette (up to 768 bytes) counts, as every codec's header does.

    The octree rather than Pillow's median cut: ~0.5 vs ~8 ms per 64-px image (2-core EPYC). The
    octree palette is coarser, so files are ~30% smaller and their order differs from median cut's
    (Spearman ρ 0.61 between the two sizes on 100 Savoias dev images): a different, documented
    quantizer, not a rounding of the same one."""
    img = _as_image(array)
    if img.mode == "RGB":
        img = _palette_image(img)
    return _bytes_per_pixel(img, format="GIF")


# --- edges and gradients ---------------------------------------------------------------------------
CANNY_SIGMA = 1.0
CANNY_LOW, CANNY_HIGH = 0.1, 0.2   # hysteresis thresholds on the gradient magnitude of luma in [0, 1]


def edge_density(array: np.ndarray) -> float:
    """Share of pixels on a Canny edge, 0..1 (Canny 1986, IEEE TPAMI 8(6):679-698; the edge-density
    complexity measure of e.g. Machado et al. 2015). ``skimage.feature.canny`` on luma scaled to
    [0, 1], Gaussian σ = 1 px, hysteresis thresholds 0.1 / 0.2 on the Sobel gradient magnitude
    (skimage's defaults for float images), borders extended by the nearest pixel (so the image's
    frame is not an edge). A flat image has 0, a vertical step one edge column (1/W)."""
    y = luma(array).astype(np.float64) / 255.0
    edges = canny(y, sigma=CANNY_SIGMA, low_threshold=CANNY_LOW, high_threshold=CANNY_HIGH, mode="nearest")
    return float(edges.mean())


def spatial_information(array: np.ndarray) -> float:
    """Spatial information SI of ITU-T P.910 (04/2008, §5.3.1; 10/2023, §7.7.2): the standard
    deviation over pixels of the Sobel gradient magnitude of luma, in 8-bit luma units (0..255
    scale). P.910 takes the maximum over a video's frames; a still image is one frame. The 3x3 Sobel
    kernels are the unnormalised ones of P.910 ([1 2 1] ⊗ [-1 0 1]), and only the (H-2) x (W-2)
    pixels where the kernel fits are used (no border padding). P.910's SI, not the mean magnitude,
    because SI is the standard, cited definition (the mean reacts the same way to the amount of
    gradient, but the name SI belongs to P.910). A flat image has 0."""
    y = luma(array).astype(np.float64)
    gx = ndimage.sobel(y, axis=1)[1:-1, 1:-1]
    gy = ndimage.sobel(y, axis=0)[1:-1, 1:-1]
    return float(np.hypot(gx, gy).std())


# --- the clutter measures of Rosenholtz, Li and Nakano (2007) ---------------------------------------
def _srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """The sRGB transfer function inverted (IEC 61966-2-1), values in [0, 1]."""
    return np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)


_SRGB_LINEAR = _srgb_to_linear(np.arange(256) / 255.0)      # per 8-bit value: a lookup, not 12k powers per image
_XYZ_OVER_WHITE = (np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]).T
                   / np.array([95.047, 100.0, 108.883]))


def _lab_rosenholtz(array: np.ndarray) -> np.ndarray:
    """CIELab as in the authors' released code (RGB2Lab.m): sRGB -> linear -> XYZ (D65), but XYZ in
    [0, 1] is divided by the white point in [0, 100] units. L* is then ~9 x linear luminance. We keep
    this scale on purpose: their chromatic offsets (δL, δa, δb) and the weights that combine colour,
    contrast and orientation clutter (0.2088, 0.0660, 0.0269) were fitted on it.

    uint8 (H, W, 3) -> read-only float64 (3, H, W): L*, a*, b* planes. The last two images' results
    are cached, as Subband Entropy and Feature Congestion of one image both need them."""
    a = _checked(array)
    return _lab_of(a.tobytes(), a.shape)


@lru_cache(maxsize=2)
def _lab_of(raw: bytes, shape: tuple[int, int, int]) -> np.ndarray:
    xyz = _SRGB_LINEAR[np.frombuffer(raw, np.uint8).reshape(shape)] @ _XYZ_OVER_WHITE
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16.0 / 116.0)
    return _frozen(np.stack([116.0 * f[..., 1] - 16.0, 500.0 * (f[..., 0] - f[..., 1]),
                             200.0 * (f[..., 1] - f[..., 2])]))


def _shannon_bits(counts: np.ndarray) -> float:
    """Shannon entropy in bits of a histogram, −Σ p log2 p over its non-empty bins."""
    c = counts[counts > 0].astype(np.float64)
    p = c / c.sum()
    return float(max(0.0, -(p * np.log2(p)).sum()))


def _band_entropies(bands: np.ndarray) -> np.ndarray:
    """Shannon entropy (bits) of each band's histogram, (k, ...) -> (k,): ceil(sqrt(n)) equal-width
    bins over the band's own range (the authors' entropy of a subband), for k bands of n values at
    once. Values are binned exactly as ``np.histogram`` bins them (its index correction at the bin
    edges included, the last bin closed); a constant band (to rounding) has 0."""
    k = bands.shape[0]
    v = bands.reshape(k, -1)
    n = v.shape[1]
    nbins = int(math.ceil(math.sqrt(n)))
    lo, hi = v.min(axis=1), v.max(axis=1)
    flat = hi - lo <= 1e-9 * np.maximum(1.0, np.maximum(np.abs(lo), np.abs(hi)))
    span = np.where(flat, 1.0, hi - lo)[:, None]
    f = v - lo[:, None]
    f *= nbins / span                       # in place: the temporaries of a 49k-value level cost page faults
    idx = f.astype(np.intp)
    idx[idx == nbins] -= 1
    # np.histogram's correction for values within rounding of a bin edge: only those few need it.
    near = np.rint(f)
    near -= f
    r, c = np.nonzero(np.abs(near, out=near) < 1e-6)
    if r.size:
        edges = np.linspace(lo[r], hi[r], nbins + 1, axis=1)               # (m, nbins + 1)
        at, x, m = idx[r, c], v[r, c], np.arange(r.size)
        at -= x < edges[m, at]
        at += (x >= edges[m, at + 1]) & (at != nbins - 1)
        idx[r, c] = at
    idx += (np.arange(k) * nbins)[:, None]
    counts = np.bincount(idx.ravel(), minlength=k * nbins).reshape(k, nbins)
    p = counts / float(n)
    h = -(p * np.log2(np.where(counts > 0, p, 1.0))).sum(axis=1)
    return np.where(flat, 0.0, np.maximum(h, 0.0))


@lru_cache(maxsize=8)
def _steerable_masks(h: int, w: int, levels: int, orientations: int) -> tuple:
    """Fourier masks of the steerable pyramid (Simoncelli & Freeman 1995, "The steerable pyramid: a
    flexible architecture for multi-scale derivative computation", ICIP; matlabPyrTools
    ``buildSFpyr``, one-octave sqrt raised-cosine radial masks, order ``orientations`` − 1 angular
    masks), on the half spectrum of ``rfft2``: the first low-pass, then per level the
    (orientations, h_l, w_l // 2 + 1) band masks, the low-pass mask, and the row and column indices
    that keep the central half of the spectrum (the 2x downsampling to the next level). Built once
    per image size.

    A band is the real part of the inverse transform of spectrum x mask; for a real image (a
    Hermitian spectrum X) that equals the inverse of X times the mask's Hermitian part
    (M(f) + conj M(−f)) / 2, whose product is Hermitian, so ``irfft2`` of the half spectrum gives
    the band directly (half the transform and none of the discarded imaginary part)."""
    fy = np.fft.fftshift(np.fft.fftfreq(h)) * 2           # −1..1, 1 = Nyquist
    fx = np.fft.fftshift(np.fft.fftfreq(w)) * 2
    yy, xx = np.meshgrid(fy, fx, indexing="ij")
    rad = np.hypot(xx, yy)
    rad[h // 2, w // 2] = rad[h // 2, w // 2 - 1] if w > 1 else 1.0   # no log of 0 at DC
    log_rad, angle = np.log2(rad), np.arctan2(yy, xx)

    def hi(lr: np.ndarray, edge: float) -> np.ndarray:     # 0 -> 1 across the octave [edge − 1, edge]
        return np.sin(np.clip(lr - edge + 1.0, 0.0, 1.0) * np.pi / 2)

    def lo(lr: np.ndarray, edge: float) -> np.ndarray:
        return np.cos(np.clip(lr - edge + 1.0, 0.0, 1.0) * np.pi / 2)

    def half(m: np.ndarray) -> np.ndarray:
        """A centred mask in rfft2's half layout, made Hermitian: (M(f) + conj M(−f)) / 2."""
        m = np.fft.ifftshift(m, axes=(-2, -1))
        mirror = np.roll(np.flip(m, axis=(-2, -1)), 1, axis=(-2, -1))     # M(−f) in fft2's order
        return np.ascontiguousarray(((m + np.conj(mirror)) / 2)[..., : m.shape[-1] // 2 + 1])

    order = orientations - 1
    const = 2 ** (2 * order) * math.factorial(order) ** 2 / (orientations * math.factorial(2 * order))
    first = half(lo(log_rad, 0.0))          # lo0; the high-pass residual (1 − lo0) is dropped
    out = []
    for _ in range(levels):
        bands = []
        for b in range(orientations):
            d = np.mod(angle - np.pi * b / orientations + np.pi, 2 * np.pi) - np.pi
            ang = 2 * np.sqrt(const) * np.cos(d) ** order * (np.abs(d) < np.pi / 2)
            bands.append(((-1j) ** order) * ang * hi(log_rad, -1.0))
        n_y, n_x = log_rad.shape
        cy, cx = (slice(n // 2 - (n + 1) // 4, n // 2 - (n + 1) // 4 + (n + 1) // 2) for n in (n_y, n_x))
        # rows: the central half of the spectrum as indices into fft2's order, in fft2's order;
        # columns (non-negative frequencies only): the first half of those kept
        keep_y = np.fft.ifftshift(np.fft.fftshift(np.arange(n_y))[cy])
        keep_x = np.arange((n_x + 1) // 2 // 2 + 1)
        out.append((half(np.stack(bands)), half(lo(log_rad, -1.0)[cy, cx]), keep_y[:, None], keep_x[None, :]))
        log_rad, angle = log_rad[cy, cx] + 1.0, angle[cy, cx]
    return _frozen(first), tuple(tuple(_frozen(m) for m in spec) for spec in out)


def _steerable_bands(img: np.ndarray, levels: int, orientations: int) -> list[np.ndarray]:
    """The subbands of the steerable pyramid of 2-D images ``img`` (..., H, W), all leading images at
    once: per level one (..., orientations, h_l, w_l) array of oriented bands (h_0 = H, then halved),
    then the (..., h_L, w_L) low-pass residual (the high-pass residual left out, as the authors'
    ``band_entropy`` leaves it out)."""
    first, specs = _steerable_masks(*img.shape[-2:], levels, orientations)
    dft = sp_fft.rfft2(img) * first
    size = img.shape[-2:]
    bands: list[np.ndarray] = []
    for masks, low, keep_y, keep_x in specs:
        bands.append(sp_fft.irfft2(dft[..., None, :, :] * masks, s=size, overwrite_x=True))
        dft = dft[..., keep_y, keep_x] * low     # central half of the spectrum (2x downsampling), low-passed
        size = (keep_y.size, (size[1] + 1) // 2)
    bands.append(sp_fft.irfft2(dft, s=size))
    return bands


SE_LEVELS, SE_ORIENTATIONS, SE_CHROMA_WEIGHT = 3, 4, 0.0625


def subband_entropy(array: np.ndarray) -> float:
    """Subband Entropy clutter (Rosenholtz, Li & Nakano 2007, "Measuring visual clutter", J. Vision
    7(2):17, §3): the mean Shannon entropy (bits) of the steerable-pyramid subbands (3 scales x 4
    orientations + low-pass residual) of CIELab L*, plus 0.0625 x that of a* and of b*, divided by
    1 + 2·0.0625 (their defaults). A chroma channel spanning less than 0.008 is zeroed, as in their
    code. More bits = more clutter. A flat image has 0.

    Simplifications: bands use equal-width histograms of ceil(sqrt(n)) bins (the authors' entropy);
    the pyramid is our compact Fourier-domain build of ``buildSFpyr`` (same masks, our own code),
    run on the three channels at once."""
    lab = _lab_rosenholtz(array).copy()                                 # (3, H, W), chroma zeroed below
    span = lab.max(axis=(1, 2)) - lab.min(axis=(1, 2))
    lab[1:][span[1:] < 0.008] = 0.0
    levels = _steerable_bands(lab, SE_LEVELS, SE_ORIENTATIONS)
    per_band = np.concatenate([_band_entropies(b.reshape(-1, b.shape[-2] * b.shape[-1])).reshape(3, -1)
                               for b in levels], axis=1)               # (3 channels, 13 bands)
    mean = per_band.mean(axis=1)
    return float((mean[0] + SE_CHROMA_WEIGHT * (mean[1] + mean[2])) / (1.0 + 2.0 * SE_CHROMA_WEIGHT))


# Feature Congestion filters every map with small separable linear filters. Each 1-D filter along an
# axis of n pixels is the (n_out, n) matrix K of that ndimage call, built once by running the call on
# the identity (so borders and truncation are ndimage's, exactly); a stack of maps (..., h, w) is then
# filtered by two BLAS products, K_h @ maps @ K_w.T, instead of one ndimage pass per map and axis.
@lru_cache(maxsize=64)
def _gauss_matrix(n: int, sigma: float, order: int, mode: str, truncate: float) -> np.ndarray:
    """``ndimage.gaussian_filter1d(·, sigma, order=order, mode=mode, truncate=truncate)`` as an (n, n) matrix."""
    return _frozen(ndimage.gaussian_filter1d(np.eye(n), sigma, axis=0, order=order, mode=mode, truncate=truncate))


_PYR_KERNEL = np.array([0.05, 0.25, 0.4, 0.25, 0.05])


@lru_cache(maxsize=16)
def _reduce_matrix(n: int) -> np.ndarray:
    """Blur with [.05 .25 .4 .25 .05] (mirrored borders), keep every other pixel: a (ceil(n/2), n) matrix."""
    return _frozen(ndimage.convolve1d(np.eye(n), _PYR_KERNEL, axis=0, mode="mirror")[::2])


@lru_cache(maxsize=16)
def _upsample_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Linear interpolation from n_in to n_out pixels, ``ndimage.zoom(order=1, mode="nearest")``: (n_out, n_in)."""
    return _frozen(ndimage.zoom(np.eye(n_in), (n_out / n_in, 1.0), order=1, mode="nearest"))


def _gauss(maps: np.ndarray, sigma: float, order: tuple[int, int] = (0, 0), mode: str = "reflect",
           truncate: float = 2.0) -> np.ndarray:
    """``ndimage.gaussian_filter`` of each (h, w) map of a stack (..., h, w), ``order`` per axis (y, x)."""
    h, w = maps.shape[-2:]
    return _gauss_matrix(h, sigma, order[0], mode, truncate) @ maps @ _gauss_matrix(w, sigma, order[1], mode, truncate).T


def _pool(maps: np.ndarray, sigma: float) -> np.ndarray:
    """Local mean: a Gaussian window of std ``sigma`` px, truncated at 2σ as in the authors' code."""
    return _gauss(maps, sigma)


def _gaussian_pyramid(img: np.ndarray, levels: int) -> list[np.ndarray]:
    """Of (..., H, W) maps: blur with [.05 .25 .4 .25 .05] (reflected borders) and take every other
    pixel, ``levels`` - 1 times."""
    pyr = [img]
    for _ in range(levels - 1):
        h, w = pyr[-1].shape[-2:]
        pyr.append(_reduce_matrix(h) @ pyr[-1] @ _reduce_matrix(w).T)
    return pyr


def _collapse(maps: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Each scale's map brought to full size (bilinear), then the maximum over scales (their collapse)."""
    out = maps[0]
    for m in maps[1:]:
        out = np.maximum(out, _upsample_matrix(shape[0], m.shape[0]) @ m @ _upsample_matrix(shape[1], m.shape[1]).T)
    return out


FC_LEVELS = 3
FC_COLOUR_POOL, FC_CONTRAST_FILTER, FC_CONTRAST_POOL = 3.0, 1.0, 3.0
FC_ORIENT_FILTER, FC_ORIENT_ENERGY_POOL, FC_ORIENT_POOL = 16 / 14 * 1.75, 1.75, 4 * 3.5
FC_WEIGHTS = (0.2088, 0.0660, 0.0269)     # colour, contrast, orientation (getClutter_FC.m)
_FC_DELTA2 = (0.0007 ** 2, 0.1 ** 2, 0.05 ** 2)   # (δL², δa², δb²) added to the colour covariance
_PAIRS = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))


def _colour_clutter(lab: np.ndarray) -> np.ndarray:
    """Of one scale's (3, h, w) L*, a*, b*: the volume of the local colour covariance ellipsoid,
    det(Σ + diag δ²)^(1/6), (h, w)."""
    pooled = _pool(np.concatenate([lab, np.stack([lab[i] * lab[j] for i, j in _PAIRS])]), FC_COLOUR_POOL)
    mean = pooled[:3]
    c00, c01, c02, c11, c12, c22 = (pooled[3 + k] - mean[i] * mean[j] + (_FC_DELTA2[i] if i == j else 0.0)
                                    for k, (i, j) in enumerate(_PAIRS))
    det = c00 * (c11 * c22 - c12 * c12) - c01 * (c01 * c22 - c12 * c02) + c02 * (c01 * c12 - c11 * c02)
    return np.abs(det) ** (1.0 / 6.0)


def _contrast_clutter(lum: np.ndarray) -> np.ndarray:
    """Local std of |DoG| contrast energy (centre σ 0.71, surround 1.14 x the filter σ), (h, w)."""
    s = FC_CONTRAST_FILTER
    c = np.abs(_gauss(lum, 0.71 * s, mode="mirror", truncate=3 / 0.71) - _gauss(lum, 1.14 * s, mode="mirror", truncate=3 / 1.14))
    mean, mean_sq = _pool(np.stack([c, c * c]), FC_CONTRAST_POOL)
    return np.sqrt(np.abs(mean_sq - mean * mean))


def _orientation_clutter(lum: np.ndarray) -> np.ndarray:
    """Local covariance of the (cos 2θ, sin 2θ)-like opponent orientation energies, det^(1/4), (h, w):
    oriented 2nd-derivative energy at 0°, 90°, 45°, 135° pooled (σ 1.75), (H−V, R−L) normalised by
    the total energy + 1 (Bergen & Landy 1991 opponent energy), pooled over σ = 14 px."""
    s = FC_ORIENT_FILTER
    gyy, gxx, gxy = (_gauss(lum, s, order, mode="mirror", truncate=4.0) for order in ((2, 0), (0, 2), (1, 1)))
    # energy of the 2nd derivative across each orientation (0° = horizontal structure)
    f = np.stack([gyy, gxx, 0.5 * (gxx + gyy) - gxy, 0.5 * (gxx + gyy) + gxy])
    e = _pool(f * f, FC_ORIENT_ENERGY_POOL)
    total = e[0] + e[1] + e[2] + e[3] + 1.0
    hv, dd = (e[0] - e[1]) / total, (e[3] - e[2]) / total
    mc, ms, m11, m22, m12 = _pool(np.stack([hv, dd, hv * hv, dd * dd, hv * dd]), FC_ORIENT_POOL)
    c11, c22, c12 = m11 - mc * mc + 0.001, m22 - ms * ms + 0.001, m12 - mc * ms
    return np.abs(c11 * c22 - c12 * c12) ** 0.25


def feature_congestion(array: np.ndarray) -> float:
    """Feature Congestion clutter (Rosenholtz, Li & Nakano 2007, J. Vision 7(2):17, §2; their
    ``getClutter_FC`` defaults): the image in CIELab, a 3-level Gaussian pyramid; at each scale the
    local variability of colour (covariance-ellipsoid volume, pooling σ 3 px), luminance contrast
    (std of DoG energy, filter σ 1, pooling σ 3) and orientation (covariance of opponent
    orientation energy, pooling σ 14); each collapsed over scales by the maximum; the map
    colour/0.2088 + contrast/0.0660 + orientation/0.0269 averaged over pixels (Minkowski p = 1).

    Simplifications (documented, our own compact code): Gaussian windows with reflected borders in
    place of their overlap-renormalised convolution; the oriented filters are Gaussian second
    derivatives (σ = 2 px) steered to 0/45/90/135° in place of their rotated three-Gaussian DOOG
    kernels; coarse maps are upsampled bilinearly. Absolute values therefore differ from their
    toolbox; the ordering of images is what the measure is used for here. Every filter is
    ``scipy.ndimage``'s, applied as a cached matrix (see ``_gauss_matrix``)."""
    lab = _lab_rosenholtz(array)                                        # (3, H, W)
    shape = lab.shape[1:]
    pyr = _gaussian_pyramid(lab, FC_LEVELS)
    colour = _collapse([_colour_clutter(p) for p in pyr], shape)
    contrast = _collapse([_contrast_clutter(p[0]) for p in pyr], shape)
    orient = _collapse([_orientation_clutter(p[0]) for p in pyr], shape)
    fc = colour / FC_WEIGHTS[0] + contrast / FC_WEIGHTS[1] + orient / FC_WEIGHTS[2]
    return float(fc.mean())


# --- segmentation, colour, histogram -----------------------------------------------------------------
FH_SCALE, FH_SIGMA, FH_MIN_SIZE = 100.0, 0.0, 16


def fh_regions(array: np.ndarray) -> float:
    """Number of regions of the Felzenszwalb–Huttenlocher graph segmentation (Felzenszwalb &
    Huttenlocher 2004, "Efficient graph-based image segmentation", IJCV 59(2):167-181), RGB, with
    fixed parameters for the 64-px analysis image: ``skimage.segmentation.felzenszwalb`` scale k =
    100 (on the 0..255 scale, as in the paper), no Gaussian pre-smoothing (σ = 0: the 64-px image
    is already low-pass), minimum region 16 px. A flat image is 1 region; two flat halves 2."""
    labels = felzenszwalb(_checked(array), scale=FH_SCALE, sigma=FH_SIGMA, min_size=FH_MIN_SIZE, channel_axis=-1)
    return float(np.unique(labels).size)


def colourfulness(array: np.ndarray) -> float:
    """Colourfulness M of Hasler & Süsstrunk (2003, "Measuring colourfulness in natural images",
    Proc. SPIE 5007, eq. 3 / the M^(3) metric): on the 8-bit sRGB values, rg = R − G,
    yb = (R + G)/2 − B, and M = σ_rgyb + 0.3 μ_rgyb with σ_rgyb = sqrt(σ_rg² + σ_yb²) and
    μ_rgyb = sqrt(μ_rg² + μ_yb²) (population std over pixels). Grey images have 0."""
    a = _checked(array).astype(np.float64)
    rg = a[..., 0] - a[..., 1]
    yb = 0.5 * (a[..., 0] + a[..., 1]) - a[..., 2]
    return float(math.hypot(rg.std(), yb.std()) + 0.3 * math.hypot(rg.mean(), yb.mean()))


def luminance_entropy(array: np.ndarray) -> float:
    """Shannon entropy (bits, 0..8) of the 256-bin histogram of 8-bit luma, −Σ p_i log2 p_i
    (Shannon 1948; the first-order entropy complexity measure). Flat 0, two equal grey levels 1."""
    return _shannon_bits(np.bincount(luma(array).ravel(), minlength=256))


# --- the registry --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Baseline:
    """One classic complexity measure: ``name`` is its column, ``alias`` the short CLI name,
    ``label`` a table header, ``fn`` uint8 (H, W, 3) -> float."""

    name: str
    alias: str
    label: str
    fn: Callable[[np.ndarray], float]


REGISTRY: dict[str, Baseline] = {b.name: b for b in (
    Baseline("jpeg_bpp", "jpeg", "JPEG bpp", jpeg_bpp),
    Baseline("png_bpp", "png", "PNG bpp", png_bpp),
    Baseline("webp_bpp", "webp", "WebP bpp", webp_bpp),
    Baseline("gif_bpp", "gif", "GIF bpp", gif_bpp),
    Baseline("edge_density", "edge_density", "edge density", edge_density),
    Baseline("spatial_information", "spatial_information", "SI", spatial_information),
    Baseline("subband_entropy", "subband_entropy", "subband entropy", subband_entropy),
    Baseline("feature_congestion", "feature_congestion", "feature congestion", feature_congestion),
    Baseline("fh_regions", "fh_regions", "FH regions", fh_regions),
    Baseline("colourfulness", "colourfulness", "colourfulness", colourfulness),
    Baseline("luminance_entropy", "luminance_entropy", "luminance entropy", luminance_entropy),
)}
DEFAULT_BASELINES: tuple[str, ...] = ("jpeg_bpp", "png_bpp")
ALL = "all"


def parse_baselines(spec: str | Iterable[str] | bool | None) -> tuple[str, ...]:
    """The chosen measures' column names, in registry order.

    ``spec``: ``None`` / ``False`` / ``""`` none; ``True`` the default (JPEG, PNG); ``"all"``; or a comma
    list (or iterable) of names or aliases (``jpeg`` or ``jpeg_bpp``). An unknown name raises
    ``UsageError`` listing the registry."""
    if spec is None or spec is False:
        return ()
    if spec is True:
        return DEFAULT_BASELINES
    parts = [p.strip() for p in (spec.split(",") if isinstance(spec, str) else spec)]
    parts = [p for p in parts if p]
    if any(p.lower() == ALL for p in parts):
        return tuple(REGISTRY)
    by_name = {**{b.alias: b.name for b in REGISTRY.values()}, **{n: n for n in REGISTRY}}
    unknown = [p for p in parts if p.lower() not in by_name]
    if unknown:
        raise UsageError(f"unknown baseline {', '.join(map(repr, unknown))}; choose 'all' or a comma list of: "
                         + ", ".join(b.alias for b in REGISTRY.values()))
    chosen = {by_name[p.lower()] for p in parts}
    return tuple(n for n in REGISTRY if n in chosen)


def compute(names: Sequence[str], array: np.ndarray) -> tuple[float, ...]:
    """The measures ``names`` (registry names) of one uint8 (H, W, 3) image, in that order."""
    return tuple(REGISTRY[n].fn(array) for n in names)
