"""Finding image files and reading any of them as RGB, or saying clearly why not.

Every reader in karl goes through ``open_rgb``: odd modes (RGBA, palette with transparency, 16-bit,
float, CMYK, greyscale), EXIF rotation, embedded colour profiles and animations (first frame) are
handled here, once. Every folder scan goes through ``discover_images``.

Pixel values reach the model by one rule per declared sample type, the same for every file (never
stretched to an image's own minimum and maximum):

- 8-bit samples (modes ``1``, ``L``, ``P``, ``RGB``, ``CMYK``, ...) as they are (0-255);
- 16-bit integer samples (modes ``I;16*``; PGM/PPM with a maxval above 255, which Pillow scales to
  0-65535, as mode ``I``) divided by 65535; a TIFF that declares fewer bits per sample (12-bit, say)
  by 2**bits - 1;
- 32-bit integer samples (mode ``I`` from a TIFF declaring 32 bits) divided by 2**31 - 1 (mode ``I``
  from a file that declares no depth is read as 16-bit);
- floating-point samples (Pillow's mode ``F``; float16/32/64 TIFFs of 1-4 samples, read with
  tifffile where Pillow cannot) read as 0-1 (the scikit-image convention for float images); NaN is 0
  and values up to 1.001 are clipped to 1. A float image whose samples exceed that holds another scale:
  if every sample is a whole number (8- or 16-bit data stored as float) it is divided by 255, or by
  65535 when its maximum exceeds 255; otherwise (HDR or scientific data, no scale to read it on) it is
  refused with its maximum named, never clipped to a white image;
- other integer TIFF layouts Pillow cannot open (signed, 32-bit RGB) by their type's maximum;

and anything negative is clipped to 0. A TIFF layout neither reader handles is reported as
unsupported, with its sample type and shape, not as a corrupt file. HEIF/HEIC needs the pillow-heif
plugin (registered when installed); without it such a file says so. An embedded ICC profile is honoured: the pixels are converted
to sRGB (LittleCMS through ``PIL.ImageCms``, perceptual intent), so a wide-gamut image scores as the
colour-managed viewer shows it; CIELAB images are converted the same way. A profile that cannot be
read, or does not fit the pixels (a grey profile on RGB data), is ignored.
"""
from __future__ import annotations

import contextlib
import functools
import heapq
import io
import logging
import os
import stat
import warnings
from dataclasses import dataclass
from typing import BinaryIO, Iterable, Iterator

import numpy as np
from PIL import Image, ImageCms, ImageFile, ImageOps, UnidentifiedImageError, features

# Formats Pillow opens but cannot decode the pixels of (it reads an MPEG video's header only).
_HEADER_ONLY = frozenset({"MPEG"})
# Refuse decompression bombs: more pixels than this is almost surely a hostile or broken header.
# ``set_max_pixels`` (``--max-pixels``) raises it for genuinely huge images.
DEFAULT_MAX_PIXELS = 64_000_000
_limits = {"max_pixels": DEFAULT_MAX_PIXELS}
ImageFile.LOAD_TRUNCATED_IMAGES = False
try:   # HEIF/HEIC (iPhone photos) through the pillow-heif plugin, when installed; without it they are named
    from pillow_heif import register_heif_opener
except ImportError:
    pass
else:
    register_heif_opener()


class ImageLoadError(ValueError):
    """An image that cannot be read; the message is the reason, fit for an ``error`` column (a
    ValueError, like every refusal of a bad input in the Python API)."""


def set_max_pixels(n: int | None) -> None:
    """Refuse images with more than ``n`` pixels (width x height); None restores the default, 64 Mpx.

    Raises ValueError for ``n`` < 1. Applies to every later read in this process, and to the worker
    processes of readers created afterwards (``ImageDataset`` carries the value).
    """
    if n is not None and (isinstance(n, bool) or int(n) != n or n < 1):
        raise ValueError(f"the pixel limit must be a positive whole number, got {n!r}")
    _limits["max_pixels"] = DEFAULT_MAX_PIXELS if n is None else int(n)


def max_pixels() -> int:
    """The current pixel limit (see ``set_max_pixels``)."""
    return _limits["max_pixels"]


@functools.lru_cache(maxsize=1)
def image_suffixes() -> frozenset[str]:
    """File suffixes (lower case, with the dot) of every format this Pillow can decode here.

    From ``Image.registered_extensions()``: formats with an opener, minus stubs that need an external
    handler (BUFR, GRIB, HDF5, WMF), formats whose pixels Pillow cannot decode (MPEG), and formats
    whose decoder is missing in this installation (JPEG 2000 without OpenJPEG, AVIF without libavif,
    WebP without libwebp, EPS without Ghostscript). Plugins registered before the first call (e.g.
    ``pillow_heif.register_heif_opener()``) are included.
    """
    Image.init()
    needs = {"JPEG2000": lambda: features.check_codec("jpg_2000"), "AVIF": lambda: features.check_module("avif"),
             "WEBP": lambda: features.check_module("webp"), "EPS": _has_ghostscript}
    out = set()
    for ext, fmt in Image.registered_extensions().items():
        opener = Image.OPEN.get(fmt)
        if opener is None or fmt in _HEADER_ONLY:
            continue
        factory = opener[0]
        if isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile):
            continue
        if fmt in needs and not needs[fmt]():
            continue
        out.add(ext.lower())
    return frozenset(out)


def _has_ghostscript() -> bool:
    from PIL import EpsImagePlugin
    return bool(EpsImagePlugin.has_ghostscript())


# Suffixes of HEIF images (iPhone photos): readable once the pillow-heif plugin is installed.
HEIF_SUFFIXES = frozenset({".heic", ".heif", ".hif"})


def is_image_name(name: str) -> bool:
    """Whether a file name has the suffix of a format Pillow can decode (``image_suffixes``)."""
    return os.path.splitext(name)[1].lower() in image_suffixes()


def is_hidden(name: str) -> bool:
    """A hidden file or folder name: it starts with '.' (``.ipynb_checkpoints``, macOS ``._x.jpg``)."""
    return name.startswith(".")


@dataclass(frozen=True)
class Found:
    """A path met while walking the inputs; ``error`` is set for paths that cannot be images."""

    path: str
    error: str | None = None


class Scan(list):
    """``Found`` entries sorted by path (a list), and what the scan left out of folders:

    ``hidden``: hidden files and folders skipped (each hidden folder counts once); ``other``: files
    that are not images (by suffix); ``aliases``: other paths that led to a file or folder already
    listed (symbolic links), so each real file is listed once; ``repeated``: the same path named more
    than once (a file list or command line that repeats a line), scored once; ``replaced``: tar members
    superseded by a later member of the same name (the last is the input, as ``tar -x`` leaves it);
    ``heif``: HEIF/HEIC files skipped because no HEIF decoder is installed (also counted in ``other``).
    """

    def __init__(self, found: Iterable[Found] = (), hidden: int = 0, other: int = 0, aliases: int = 0,
                 repeated: int = 0, replaced: int = 0, heif: int = 0) -> None:
        super().__init__(found)
        self.hidden, self.other, self.aliases = hidden, other, aliases
        self.repeated, self.replaced, self.heif = repeated, replaced, heif

    def counts(self) -> dict[str, int]:
        """The skip counts by name, to build another ``Scan`` of the same inputs: ``Scan(x, **s.counts())``."""
        return {"hidden": self.hidden, "other": self.other, "aliases": self.aliases, "repeated": self.repeated,
                "replaced": self.replaced, "heif": self.heif}

    def summary(self) -> str:
        """What the scan skipped, in words; empty when nothing was."""
        def n(k: int, one: str, many: str) -> str:
            return f"{k} {one if k == 1 else many}"

        parts = []
        if self.hidden:
            parts.append(n(self.hidden, "hidden file or folder", "hidden files or folders") + " (--include-hidden scans them)")
        if self.other:
            parts.append(n(self.other, "non-image file", "non-image files")
                         + (f" ({self.heif} HEIF/HEIC: no decoder installed, pip install pillow-heif)" if self.heif else ""))
        if self.aliases:
            parts.append(n(self.aliases, "link", "links") + " to an image or folder already listed")
        if self.repeated:
            parts.append(n(self.repeated, "path", "paths") + " named more than once (each scored once)")
        if self.replaced:
            parts.append(n(self.replaced, "tar member", "tar members") + " replaced by a later member of the same "
                         "name (the last is kept, as tar -x does)")
        return ("skipped " + ", ".join(parts)) if parts else ""


def _key(path: str) -> tuple[str, ...]:
    """Order of paths: by their components, so that 'a/x' sorts before 'a-b/x' and a folder's paths
    extend its own (Dijkstra below relies on that)."""
    if os.altsep:
        path = path.replace(os.altsep, os.sep)
    return tuple(path.split(os.sep))


def _hidden_entry(entry: os.DirEntry) -> bool:
    if is_hidden(entry.name):
        return True
    if os.name == "nt":   # Windows' hidden attribute (free: scandir caches stat there)
        with contextlib.suppress(OSError):
            return bool(entry.stat(follow_symlinks=False).st_file_attributes & stat.FILE_ATTRIBUTE_HIDDEN)
    return False


def discover_images(paths: Iterable[str | os.PathLike], include_hidden: bool = False,
                    extra_suffixes: Iterable[str] = ()) -> Scan:
    """Image files under ``paths`` (files and folders, recursive), sorted, each real file once.

    Folders are searched for every suffix in ``image_suffixes()``; a file named in ``paths`` is
    taken whatever its suffix (and even if hidden). Hidden files and folders met in a scan are
    skipped unless ``include_hidden``. A file reached under several paths (symbolic links to it or
    to a folder above it) is listed once, under the first of those paths in component order
    (``a/x.png`` before ``a-b/x.png`` before ``b/x.png``), whatever order the scan met them in;
    each real folder is read once, so link loops end. The same path given again (also spelled
    ``a/./x.png``) is counted as ``repeated``, another path to the same file as an alias. Broken symlinks and unreadable folders come
    back as entries with an ``error``; a missing top-level path raises FileNotFoundError. The
    returned ``Scan`` counts what was skipped. ``extra_suffixes`` (lower case, with the dot, e.g.
    ``(".tar",)``) are taken from folders as well as image suffixes.
    """
    extra = tuple(extra_suffixes)
    errors: dict[str, Found] = {}
    best: dict[str, tuple[tuple[str, ...], str]] = {}   # real file -> (key, path) of its first path
    met = 0
    heap: list[tuple[tuple[str, ...], str]] = []
    hidden = other = repeated = heif = 0
    named: set[str] = set()   # the top-level paths given, normalised: a second mention is a repeat, not a link

    def offer(path: str, key: tuple[str, ...]) -> None:
        nonlocal met
        met += 1
        real = os.path.realpath(path)
        if real not in best or key < best[real][0]:
            best[real] = (key, path)

    for top in paths:
        top = os.fsdecode(top)   # bytes paths (non-UTF-8 names) become surrogate-escaped str, like scandir's
        if not os.path.lexists(top):
            raise FileNotFoundError(f"no such file or folder: {top}")
        if os.path.normpath(top) in named:
            repeated += 1
            continue
        named.add(os.path.normpath(top))
        if os.path.isdir(top):
            heapq.heappush(heap, (_key(top), top))
        elif os.path.islink(top) and not os.path.exists(top):
            errors.setdefault(top, Found(top, "broken symlink"))
        else:
            offer(top, _key(top))
    walked: set[str] = set()
    while heap:   # smallest path first, so each real folder is read under its first path
        key, folder = heapq.heappop(heap)
        real = os.path.realpath(folder)
        if real in walked:
            met += 1   # a link to a folder already read: an alias, like a second path to a file
            continue
        walked.add(real)
        try:
            entries = list(os.scandir(folder))
        except OSError as e:
            errors.setdefault(folder, Found(folder, f"cannot list folder: {e.strerror or e}"))
            continue
        for entry in entries:
            path = entry.path
            if not include_hidden and _hidden_entry(entry):
                hidden += 1
                continue
            try:
                if entry.is_dir(follow_symlinks=True):
                    heapq.heappush(heap, (key + (entry.name,), path))
                    continue
            except OSError as e:  # symlink loops land here
                if is_image_name(entry.name):
                    errors.setdefault(path, Found(path, f"cannot follow link: {e.strerror or e}"))
                continue
            if not is_image_name(entry.name) and not entry.name.lower().endswith(extra):
                other += 1
                heif += os.path.splitext(entry.name)[1].lower() in HEIF_SUFFIXES
            elif entry.is_symlink() and not os.path.exists(path):
                errors.setdefault(path, Found(path, "broken symlink"))
            else:
                offer(path, key + (entry.name,))
    found = {path: Found(path) for _, path in best.values()}
    met -= len(best)
    for path, f in errors.items():
        found.setdefault(path, f)
    return Scan((found[k] for k in sorted(found)), hidden=hidden, other=other, aliases=met, repeated=repeated,
                heif=heif)


# --- pixels --------------------------------------------------------------------------------------
def _declared_bits(img: Image.Image) -> int | None:
    """Bits per sample a TIFF declares (tag 258), else None."""
    tags = getattr(img, "tag_v2", None)
    bits = tags.get(258) if tags is not None else None
    if isinstance(bits, tuple):
        bits = bits[0] if bits else None
    return int(bits) if isinstance(bits, int) and bits > 0 else None


# Float samples up to this are 0-1 data with rounding overshoot (clipped), not another scale.
_FLOAT_ONE = 1.001


def _float_full_scale(a: np.ndarray) -> float:
    """The full-scale value of float samples ``a`` (NaN/inf already 0) by the rule of the module
    docstring: 1, or 255 / 65535 for whole-number samples above 1; ImageLoadError otherwise."""
    top = float(a.max()) if a.size else 0.0
    if top <= _FLOAT_ONE:
        return 1.0
    if top <= 65535 and np.array_equal(a, np.round(a)):
        return 255.0 if top <= 255 else 65535.0
    raise ImageLoadError(f"float samples reach {top:g}: karl reads float images as 0-1 (whole numbers up to "
                         f"255 or 65535 as 8- or 16-bit); rescale it to 0-1 first")


def _scaled_to_8bit(img: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit integer or float image as 8-bit ``L`` by the fixed rule of the module docstring."""
    a = np.asarray(img, dtype=np.float64)
    a = np.where(np.isfinite(a), a, 0.0)
    if img.mode == "F":
        full = _float_full_scale(a)
    else:
        bits = _declared_bits(img)
        if img.mode.startswith("I;16"):
            full = 2.0 ** bits - 1 if bits and bits < 16 else 65535.0
        elif bits is None:   # "I" with no declared depth: PGM/PPM (Pillow scales them to 16 bits), FITS
            full = 65535.0
        else:                # a TIFF's 32-bit (signed) integers, or the fewer bits it declares
            full = 2.0 ** min(bits, 31) - 1
    a = np.clip(a / full, 0.0, 1.0)
    return Image.fromarray((a * 255.0 + 0.5).astype(np.uint8), "L")


def _tiff_by_tifffile(source: str | BinaryIO, limit: int) -> Image.Image:
    """A TIFF Pillow cannot open (float RGB, planar, signed or 32-bit samples), first page, with
    tifffile: 8-bit ``L``, ``LA``, ``RGB`` or ``RGBA`` by the rule of the module docstring, its ICC
    profile kept in ``info``. ImageLoadError naming the layout when it is not grey (+ alpha) or RGB
    (+ alpha); tifffile's own errors for a file that is not a readable TIFF."""
    import tifffile

    with tifffile.TiffFile(source) as tif:
        page = tif.pages[0]
        photometric = getattr(page.photometric, "name", str(page.photometric))
        n = page.samplesperpixel
        grey, rgb = photometric in ("MINISBLACK", "MINISWHITE"), photometric == "RGB"
        if page.axes not in ("YX", "YXS", "SYX") or not ((grey and n <= 2) or (rgb and n in (3, 4))):
            raise ImageLoadError(f"unsupported TIFF layout: {n} {page.dtype} sample(s) per pixel, photometric "
                                 f"{photometric}, shape {page.shape}")
        h, w = page.imagelength, page.imagewidth
        if w * h > limit:
            raise ImageLoadError(f"too large: {w}x{h} pixels (limit {limit:,}; --max-pixels raises it)")
        a = page.asarray()
        icc = page.tags.get(34675)
        profile = bytes(icc.value) if icc is not None else None
        axes = page.axes
    if axes == "SYX":
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.dtype.kind not in "fiub":
        raise ImageLoadError(f"unsupported TIFF layout: {a.dtype} samples")
    x = a.astype(np.float64)
    if a.dtype.kind == "f":
        x = np.where(np.isfinite(x), x, 0.0)
        x /= _float_full_scale(x)
    elif a.dtype.kind in "iu":
        x /= float(np.iinfo(a.dtype).max)
    x = np.clip(x, 0.0, 1.0)
    if photometric == "MINISWHITE":   # 0 is white: flip the grey sample, not the alpha
        if x.ndim == 2:
            x = 1.0 - x
        else:
            x[..., 0] = 1.0 - x[..., 0]
    img = Image.fromarray((x * 255.0 + 0.5).astype(np.uint8))   # (H, W) L; (H, W, 2|3|4) LA, RGB, RGBA
    if profile:
        img.info["icc_profile"] = profile
    return img


def _tiff_fallback(source: str | BinaryIO, limit: int) -> Image.Image:
    """``_tiff_by_tifffile``, with a file tifffile cannot parse either reported as a corrupt TIFF."""
    if not isinstance(source, str):
        source.seek(0)
    log = logging.getLogger("tifffile")
    level = log.level
    log.setLevel(logging.CRITICAL)   # it logs what it skips in a damaged file; the error below says it
    try:
        return _tiff_by_tifffile(source, limit)
    except ImageLoadError:
        raise
    except Exception:  # noqa: BLE001 - tifffile raises TiffFileError, ValueError, IndexError, struct.error, ...
        raise ImageLoadError("corrupt TIFF file (its header cannot be read)") from None
    finally:
        log.setLevel(level)


def _heif_brand(head: bytes) -> bool:
    """Whether a file's first bytes are an ISO-BMFF ``ftyp`` box of a HEIF/HEIC image."""
    return head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis",
                                                   b"mif1", b"msf1")


_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
_CMS_MODES = {"RGB ": "RGB", "GRAY": "L", "CMYK": "CMYK"}   # ICC colour space -> the PIL mode it describes


@functools.lru_cache(maxsize=32)
def _transform(profile: bytes | None, mode: str) -> ImageCms.ImageCmsTransform | None:
    """A cached transform from ``profile`` (None: CIELAB) to sRGB for ``mode`` pixels; None when the
    profile cannot be read or describes other pixels than ``mode``."""
    try:
        if profile is None:
            src = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB"))
        else:
            src = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            if _CMS_MODES.get(src.profile.xcolor_space) != mode:
                return None
        return ImageCms.buildTransform(src, _SRGB, mode, "RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return None


def _to_srgb(img: Image.Image, profile: bytes | None) -> Image.Image:
    """``img`` (8-bit, any alpha kept) converted from its embedded ICC profile (or CIELAB) to sRGB;
    unchanged when there is nothing to convert or the profile does not apply."""
    if profile is None and img.mode != "LAB":
        return img
    alpha = img.getchannel("A") if img.mode in ("RGBA", "LA", "RGBa", "La") else None
    base = img.mode if img.mode in ("RGB", "L", "CMYK", "LAB") else ("L" if img.mode.startswith("L") else "RGB")
    if img.mode != base:
        img = img.convert(base)
    t = _transform(profile if base != "LAB" else None, base)
    if t is None:
        return img
    out = ImageCms.applyTransform(img, t)
    if alpha is not None:
        out.putalpha(alpha)
    return out


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> sRGB ``RGB``: high bit depths scaled by the fixed rule, an embedded ICC profile
    applied, transparency composited on white."""
    profile = img.info.get("icc_profile") or None
    if img.mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode.startswith("I") or img.mode == "F":
        img = _scaled_to_8bit(img)
    img = _to_srgb(img, profile)
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"),
               (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


def _signature(path: str, data: bytes | BinaryIO | None = None) -> str | None:
    """The image format a file's first bytes (or ``data``'s) claim (to tell a corrupt image from a
    non-image), or None."""
    if isinstance(data, bytes):
        head = data[:12]
    elif data is not None:
        data.seek(0)
        head = data.read(12)
    else:
        try:
            with open(path, "rb") as f:
                head = f.read(12)
        except OSError:
            return None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if _heif_brand(head):
        return "HEIF"
    return next((name for sig, name in _SIGNATURES if head.startswith(sig)), None)


@contextlib.contextmanager
def _pillow_limit(limit: int) -> Iterator[None]:
    """Pillow's own bomb check (an error above 2 x ``Image.MAX_IMAGE_PIXELS``) at karl's limit for one
    read, so a raised ``--max-pixels`` is not refused by Pillow; the global is restored after."""
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = limit
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def open_rgb(path: str | os.PathLike, draft_size: int | None = None, max_pixels: int | None = None,
             data: bytes | BinaryIO | None = None) -> Image.Image:
    """Read an image as an upright sRGB ``RGB`` PIL image, or raise ImageLoadError with the reason.

    ``data``: the file's bytes, or a seekable binary file open on them (a member of a tar shard,
    ``sources.open_member``: only the header is read before the size and pixel limit are checked);
    ``path`` then only names it.
    ``draft_size`` lets JPEG decoding skip resolution it does not need (much faster for big photos).
    ``max_pixels``: refuse images with more pixels (default: ``max_pixels()``, 64 Mpx unless raised).
    """
    path = os.fsdecode(path)
    limit = max_pixels if max_pixels is not None else _limits["max_pixels"]
    try:
        if data is None:
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode):   # a FIFO or device would block or never end
                raise ImageLoadError("not a regular file (a pipe, device or socket)")
        if data is None:
            nbytes = st.st_size
        elif isinstance(data, bytes):
            nbytes = len(data)
        else:
            nbytes = data.seek(0, io.SEEK_END)
            data.seek(0)
        if nbytes == 0:
            raise ImageLoadError("empty file (0 bytes)")
        with warnings.catch_warnings(), _pillow_limit(limit):
            # Decoders warn about damaged metadata they skip; the pixels are still good, and a
            # folder of scraped images must not flood the terminal. Size is checked below.
            warnings.simplefilter("ignore")
            source = path if data is None else io.BytesIO(data) if isinstance(data, bytes) else data
            try:
                opened = Image.open(source)
            except UnidentifiedImageError:
                if _signature(path, data) != "TIFF":
                    raise
                return _to_rgb(_tiff_fallback(source, limit))
            with opened as img:
                w, h = img.size
                if w < 1 or h < 1:
                    raise ImageLoadError(f"invalid size {w}x{h}")
                if w * h > limit:
                    raise ImageLoadError(f"too large: {w}x{h} pixels (limit {limit:,}; --max-pixels raises it)")
                if img.format in _HEADER_ONLY:
                    raise ImageLoadError(f"cannot decode {img.format} pixels (Pillow reads only its header)")
                if getattr(img, "n_frames", 1) > 1:
                    img.seek(0)
                if draft_size and img.format == "JPEG" and img.mode in ("RGB", "L", "CMYK", "YCbCr"):
                    img.draft(img.mode, (draft_size, draft_size))
                img.load()
                return upright_rgb(img)
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        kind = _signature(path, data)
        if kind == "HEIF":
            raise ImageLoadError("HEIF/HEIC image, and no HEIF decoder is installed: pip install pillow-heif "
                                 "(karl uses it when present)") from None
        raise ImageLoadError(f"corrupt {kind} file (its header cannot be read)" if kind
                             else "not an image (unrecognised format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageLoadError(f"decompression bomb refused: {e}") from None
    except PermissionError:
        raise ImageLoadError("permission denied") from None
    except FileNotFoundError:
        raise ImageLoadError("file not found (broken link or removed)") from None
    except OSError as e:
        raise ImageLoadError(f"corrupt or truncated image: {e}") from None
    except Exception as e:  # noqa: BLE001 - decoders raise many types (struct.error, zlib.error, KeyError, ...)
        raise ImageLoadError(f"cannot decode image: {type(e).__name__}: {e}") from None


def upright_rgb(img: Image.Image) -> Image.Image:
    """A loaded PIL image as ``open_rgb`` returns a file's: EXIF rotation applied, then sRGB ``RGB`` by
    the module's rules (high bit depths, ICC profile, transparency on white)."""
    return _to_rgb(ImageOps.exif_transpose(img) or img)


def squash(img: Image.Image, resolution: int) -> np.ndarray:
    """An ``RGB`` image squashed to resolution x resolution (bicubic, aspect not kept): uint8 (R, R, 3).

    Squashing (not cropping) keeps all of the content, which is what complexity is about. An image
    already R x R is returned as it is."""
    img = img.resize((resolution, resolution), Image.BICUBIC, reducing_gap=3.0)
    return np.array(img, dtype=np.uint8)


def load_for_model(path: str | os.PathLike, resolution: int, max_pixels: int | None = None,
                   data: bytes | BinaryIO | None = None) -> np.ndarray:
    """The whole image squashed to resolution x resolution (``squash``): uint8 array (R, R, 3), sRGB.

    ``max_pixels`` and ``data`` as in ``open_rgb``.
    """
    return squash(open_rgb(path, draft_size=2 * resolution, max_pixels=max_pixels, data=data), resolution)


def load_max_side(path: str | os.PathLike, max_side: int, max_pixels: int | None = None,
                  data: bytes | BinaryIO | None = None) -> np.ndarray:
    """The image with its shorter side at most ``max_side`` (aspect kept): uint8 (H, W, 3), sRGB.
    ``max_pixels`` and ``data`` as in ``open_rgb``."""
    img = open_rgb(path, draft_size=max_side, max_pixels=max_pixels, data=data)
    w, h = img.size
    scale = max_side / min(w, h)
    if scale < 1:
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC, reducing_gap=3.0)
    return np.array(img, dtype=np.uint8)

