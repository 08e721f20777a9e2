"""The measuring core: the one path from inputs to KC, shared by every command, study and benchmark.

Two halves, kept apart so a caller with pixels in memory (a Ray Data scorer, a metric object, a
study that makes its own images) uses the second alone:

1. **Inputs to pixels.** ``collect_inputs`` names the images (files, folders searched recursively,
   ``.tar`` shards in the WebDataset layout, a member ``shard.tar/KEY.EXT``, file lists) as sorted
   ``Found`` entries; ``read_pixels`` turns one entry into uint8 (R, R, 3) sRGB (a tar member is read
   from its shard, never unpacked); ``image_batches`` streams them through DataLoader workers for
   large runs, ``load_inputs`` reads them all at once for small ones (studies, ``compare``,
   ``show``). Unreadable inputs are error entries, never exceptions.
2. **Pixels to measurements.** ``measure(model, images, eps, method)`` measures one batch
   (B, 3, R, R): per image and ε the KC, soft KC, the check of the kept tokens (``l1``: the
   decoder's reconstruction; ``code_l1``: the code's own, ``methods.resolve_check``) and the
   encoder / decoder runs spent, and on request the reconstructions, p_halt and the encodings.
   ``measure_all`` runs it over an array of any length in batches. Which method a model supports, and so where its tokens come
   from, is decided by the one method table, ``methods.py``.

    from karl_cli.scoring.measure import measure
    m = measure(model, x, [0.03, 0.05])          # x: uint8 or float (B, 3, R, R)
    m.kc, m.code_l1                              # (B, 2) each (the wavelet KARL's default check)

Method semantics (KARL arXiv 2507.07995 §3; ALIT arXiv 2411.02393): ``single`` is one encoder pass
per ε whose halting head keeps T_max − halted tokens (+ the check: the code's reconstruction, or
one decoder pass);
``search`` / ``prefix`` are the oracle's shared sweep (``oracle.sweep``): the smallest budget whose
reconstruction reaches L1 <= ε, T_max where none does.
"""
from __future__ import annotations

import os
import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from karl_cli.defaults import BATCH_SIZE, IN_MEMORY_BATCH_SIZE
from karl_cli.errors import UsageError
from karl_cli.io.arrays import ACCEPTED, is_in_memory, memory_pixels
from karl_cli.io.images import Found, ImageLoadError, Scan, max_pixels
from karl_cli.io.sources import gather, load_found
from karl_cli.models.tokenizer import Encoding
from karl_cli.runtime import inference, model_device, to_model_input
from karl_cli.scoring.baselines import compute
from karl_cli.scoring.methods import check_eps, check_method, resolve_check, validate_eps
from karl_cli.scoring.oracle import meets, sweep

Progress = Callable[[int, int], None]   # progress(images_done, images_total)


# --- inputs -----------------------------------------------------------------------------------------
def collect_inputs(paths_or_found: str | os.PathLike | Iterable[str | os.PathLike | Found] = (),
                   include_hidden: bool = False, files_from: str | os.PathLike | None = None) -> Scan:
    """Found entries for paths (files, folders searched recursively, ``.tar`` shards and their members
    ``shard.tar/KEY.EXT``: ``sources.gather``; hidden ones only with ``include_hidden``), the paths
    listed in the file ``files_from`` (``-``: stdin; a missing listed path is an error entry), or
    pass-through ``Found`` objects; sorted, with the scan's counts of what it skipped. A missing
    command-line path or no inputs at all raise UsageError.
    """
    if isinstance(paths_or_found, (str, bytes, os.PathLike, Found)):
        paths_or_found = [paths_or_found]
    given = list(paths_or_found)
    found = [p for p in given if isinstance(p, Found)]
    raw = [p for p in given if not isinstance(p, Found)]
    scan = Scan()
    if raw or files_from is not None:
        try:
            scan = gather(raw, files_from=files_from, include_hidden=include_hidden)
        except FileNotFoundError as e:
            raise UsageError(str(e) if not e.filename else f"no such file: {e.filename}") from None
        found.extend(scan)
    if not given and files_from is None:
        raise UsageError("no input paths given")
    if not found:
        skipped = scan.summary()
        where = [os.fspath(p) for p in raw] + ([f"the list {os.fspath(files_from)}"] if files_from is not None else [])
        raise UsageError("no images found under " + ", ".join(where) + (f" ({skipped})" if skipped else ""))
    uniq = {f.path: f for f in reversed(found)}  # first occurrence wins
    return Scan((uniq[k] for k in sorted(uniq)), **scan.counts())


def parse_shard(spec: str | Sequence[int] | None) -> tuple[int, int] | None:
    """``"K/N"`` or ``(K, N)`` -> (K, N) with 0 <= K < N; None stays None. UsageError otherwise."""
    if spec is None:
        return None
    try:
        if isinstance(spec, str):
            k_s, n_s = spec.split("/")
            k, n = int(k_s), int(n_s)
        else:
            k, n = (int(v) for v in spec)
    except (ValueError, TypeError):
        raise UsageError(f"shard must look like K/N (e.g. 0/4), got {spec!r}") from None
    if n < 1 or not 0 <= k < n:
        raise UsageError(f"shard K/N needs 0 <= K < N, got {k}/{n}")
    return k, n


def apply_shard(items: Sequence[Any], shard: str | Sequence[int] | None) -> list[Any]:
    """Items i with i % N == K (items are in sorted order, so every shard is deterministic)."""
    parsed = parse_shard(shard)
    if parsed is None:
        return list(items)
    k, n = parsed
    return [it for i, it in enumerate(items) if i % n == k]


def read_pixels(entry: Found, resolution: int | None = None, max_side: int | None = None,
                limit: int | None = None) -> np.ndarray:
    """One input entry (a file or a tar member) as uint8 sRGB pixels: squashed to (R, R, 3) with
    ``resolution`` (what the model sees, ``images.load_for_model``), else with its shorter side capped
    at ``max_side`` (aspect kept). ``limit``: the pixel guard (default: the ``--max-pixels`` setting).
    Raises ImageLoadError with the reason (an error entry's own reason included)."""
    if entry.error:
        raise ImageLoadError(entry.error)
    try:
        return load_found(entry, resolution, max_pixels() if limit is None else limit, max_side=max_side)
    except ImageLoadError:
        raise
    except Exception as e:  # noqa: BLE001 - an odd file must never stop a 10,000-image run
        raise ImageLoadError(f"cannot read image: {type(e).__name__}: {e}") from None


class ImageDataset(Dataset):
    """Reads each Found item at the model resolution; failures become error items, never exceptions.
    ``baselines``: registry names of the measures to compute here, in the worker, on the same pixels."""

    def __init__(self, items: Sequence[Found], resolution: int, baselines: Sequence[str] = ()) -> None:
        self.items = list(items)
        self.resolution = resolution
        self.baselines = tuple(baselines)
        self.max_pixels = max_pixels()   # travels to worker processes, which may not share the setting

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[str, torch.Tensor | None, str | None, tuple[float, ...] | None]:
        f = self.items[i]
        try:
            arr = read_pixels(f, self.resolution, limit=self.max_pixels)
        except ImageLoadError as e:
            return f.path, None, str(e) or "cannot read image", None
        base = compute(self.baselines, arr) if self.baselines else None
        return f.path, torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))), None, base


def collate_images(items: list[tuple]) -> dict[str, Any]:
    """Batch of dataset items: ``images`` stacks only the readable ones (uint8 (n_ok,3,R,R) or None)."""
    paths = [it[0] for it in items]
    errors = [it[2] for it in items]
    good = [it[1] for it in items if it[1] is not None]
    return {"paths": paths, "errors": errors, "baselines": [it[3] for it in items],
            "images": torch.stack(good) if good else None}


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


# Batches decoded ahead by the loader thread of ``workers=0``: one in the queue and one being built
# keep the model fed without holding more than a few batches of pixels.
PREFETCH_BATCHES = 2


def image_batches(items: Sequence[Found], resolution: int, batch_size: int = BATCH_SIZE, workers: int = 0,
                  baselines: Sequence[str] = (), pin_memory: bool = False) -> Iterator[dict[str, Any]]:
    """Batches in item order (``collate_images``), decoded (with the ``baselines``, registry names)
    while the model runs: by ``workers`` processes, or with ``workers=0`` by one thread of this process
    (image decoding and the model's kernels release the GIL, so the two overlap on two cores without a
    second copy of the interpreter). UsageError for batch_size < 1 or workers < 0."""
    if batch_size < 1:
        raise UsageError(f"batch size must be >= 1, got {batch_size}")
    if workers < 0:
        raise UsageError(f"workers must be >= 0, got {workers}")
    if not items:
        return iter(())
    loader = DataLoader(ImageDataset(items, resolution, baselines), batch_size=batch_size, shuffle=False,
                        num_workers=workers, collate_fn=collate_images, pin_memory=pin_memory,
                        worker_init_fn=_worker_init if workers else None)
    return iter(loader) if workers else prefetched(iter(loader), PREFETCH_BATCHES)


def prefetched(source: Iterator[Any], depth: int) -> Iterator[Any]:
    """``source``'s items in order, produced ahead by a background thread, at most ``depth`` waiting.
    An exception in the thread (an interrupt included) is raised here, at the item it stopped at;
    closing this generator early (a break, an error in the consumer) stops the thread."""
    box: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def offer(item: Any) -> bool:
        while not stop.is_set():
            try:
                box.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in source:
                if not offer((item, None)):
                    return
            offer((end, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            offer((end, e))

    worker = threading.Thread(target=produce, name="karl-image-loader", daemon=True)
    worker.start()
    try:
        while True:
            item, error = box.get()
            if item is end:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()


def load_inputs(paths: str | os.PathLike | Iterable[str | os.PathLike | Found], resolution: int | None = None,
                max_side: int | None = None, sample: int | None = None, seed: int = 0,
                files_from: str | os.PathLike | None = None
                ) -> tuple[list[tuple[str, np.ndarray]], list[tuple[str, str]]]:
    """Every input under ``paths`` (``collect_inputs``: files, folders, tar shards, lists) read at once,
    sorted by path: ``resolution`` squashes each to the model input, else ``max_side`` caps the shorter
    side (``read_pixels``). ``sample``: a seeded random subset of that many inputs. Returns ((path,
    uint8 array) list, (path, reason) list of unreadable ones). UsageError when none can be read."""
    found = collect_inputs(paths, files_from=files_from)
    if sample is not None:
        if sample < 1:
            raise UsageError(f"--sample must be >= 1, got {sample}")
        if sample < len(found):
            keep = np.sort(np.random.default_rng(seed).choice(len(found), sample, replace=False))
            found = [found[i] for i in keep]
    good, bad = [], []
    for f in found:
        try:
            good.append((f.path, read_pixels(f, resolution, max_side if resolution is None else None)))
        except ImageLoadError as e:
            bad.append((f.path, str(e) or "cannot read image"))
    if not good:
        raise UsageError("none of the inputs could be read: " + "; ".join(f"{p}: {r}" for p, r in bad[:3]))
    return good, bad


def _read_path(p: str | bytes | os.PathLike, resolution: int) -> np.ndarray:
    """One path (a file or a tar member ``shard.tar/KEY.EXT``) as uint8 (R, R, 3); ImageLoadError
    (a ValueError) naming it when it cannot be read."""
    try:
        found = gather([p]) if not os.path.isdir(p) else []
        if len(found) != 1:
            raise ImageLoadError("not one image (a folder or a tar shard); name a file or a member "
                                 "shard.tar/KEY.EXT")
        return read_pixels(found[0], resolution)
    except (ImageLoadError, FileNotFoundError, ValueError) as e:
        why = "file not found" if isinstance(e, FileNotFoundError) else str(e)
        raise ImageLoadError(f"{os.fsdecode(p)}: {why}") from None


def load_pixels(images: Any, resolution: int) -> np.ndarray:
    """Images given any way a Python caller has them, as the model's pixels: uint8 (N, R, R, 3) sRGB.

    ``images``: a path (a file or a tar member ``shard.tar/KEY.EXT``, read as ``karl complexity``
    reads it), a PIL image, a NumPy array (H, W, 3) / (N, H, W, 3) uint8 or float in [0, 1], a tensor
    (3, H, W) / (B, 3, H, W) in [0, 1] (or uint8), or a list (any iterable) of these, in that order.
    In-memory images go through the files' own conversion and resize (``io.arrays``), so they give
    the pixels of the same image saved losslessly and read from the file. Raises ValueError (one
    line) for anything else, ImageLoadError (a ValueError) naming a path that cannot be read.
    """
    if isinstance(images, (str, bytes, os.PathLike)) or is_in_memory(images):
        images = [images]
    elif not isinstance(images, Iterable):
        raise ValueError(f"cannot read a {type(images).__name__} as an image: give a path, {ACCEPTED}, "
                         "or a list of them")
    out = [_read_path(x, resolution)[None] if isinstance(x, (str, bytes, os.PathLike)) else memory_pixels(x, resolution)
           for x in images]
    return np.concatenate(out) if out else np.empty((0, resolution, resolution, 3), np.uint8)


def load_images(images: Any, resolution: int) -> torch.Tensor:
    """Images as the model's input: a float32 tensor (B, 3, R, R) in [0, 1], R = ``resolution`` (the
    model's ``config.resolution``), in the order given: paths (files, tar members), PIL images, NumPy
    arrays, tensors, or a list of them (``load_pixels``).

    Each image is read as ``karl complexity`` reads it (``images.open_rgb``: EXIF rotation,
    transparency on white, first frame, ...) and **squashed** to R x R with bicubic resampling: the
    aspect ratio is not kept, so all of the content counts (no crop). The same pixels as ``score``
    gives the model. Raises ImageLoadError naming the first unreadable file, ValueError for an input
    that is not an image.

        model = KARL.from_pretrained("weights/karl-small")
        x = load_images(["a.jpg", pil_image], model.config.resolution)   # (2, 3, 64, 64)
        kc = model.encode(x, eps=0.05).kc
    """
    return torch.from_numpy(load_pixels(images, resolution)).permute(0, 3, 1, 2).float().div_(255.0)


# --- measuring --------------------------------------------------------------------------------------
@dataclass
class Measurement:
    """What ``measure`` found for a batch of B images at E values of ε (column j for ``eps[j]``).

    Pairs left out by ``need`` keep kc = T_max, kc_soft = T_max, l1 = code_l1 = NaN and 0 runs.
    ``check`` is the check that ran (``methods.resolve_check``): ``code`` fills ``code_l1`` alone,
    ``decoder`` fills ``l1`` (and ``code_l1`` too where the model's tokens are its code, single only),
    ``none`` neither.
    """

    eps: list[float]
    method: str
    kc: torch.Tensor            # (B, E) long: tokens kept (single) or the smallest budget meeting ε
    kc_soft: torch.Tensor       # (B, E) float32: Σ(1 − p_halt) (single); = kc for the searches
    l1: torch.Tensor            # (B, E) float32: pixel L1 (0-1 scale) of the decoder's reconstruction; NaN unchecked
    code_l1: torch.Tensor       # (B, E) float32: pixel L1 of the code's reconstruction of the kept tokens; NaN unchecked
    encoder_runs: torch.Tensor  # (B, E) long: encoder passes (ALIT: iterations) spent on the pair
    decoder_runs: torch.Tensor  # (B, E) long: decoder passes spent on the pair
    recon: torch.Tensor | None = None      # (B, E, 3, R, R) on the model's device, with keep_recon
    p_halt: torch.Tensor | None = None     # (B, E, T_max) float32, single with keep_halting
    encodings: list[Encoding | None] | None = None  # per ε, of the needed rows (None: none needed); single
    check: str = "decoder"                 # the check that ran: code, decoder or none

    @property
    def checked_l1(self) -> torch.Tensor:
        """(B, E) float32: the check's L1, ``l1`` (the decoder's) where it ran, else ``code_l1``; NaN
        where neither did."""
        return torch.where(self.l1.isnan(), self.code_l1, self.l1)

    @property
    def met(self) -> torch.Tensor:
        """(B, E) bool: the checked reconstruction reaches ε (``oracle.meets`` on ``checked_l1``: the
        decoder's L1 where present, else the code's; False where unchecked)."""
        return meets(self.checked_l1, torch.tensor(self.eps, dtype=torch.float64).view(1, -1))


def measure(model: torch.nn.Module, images: torch.Tensor, eps: float | Sequence[float], method: str | None = None,
            *, check: str = "auto", l1: bool = True, need: torch.Tensor | None = None, keep_recon: bool = False,
            keep_halting: bool = False, keep_encodings: bool = False) -> Measurement:
    """KC of one batch at each ε, the way ``method`` counts tokens.

    ``images``: uint8 (B, 3, R, R) in 0..255 or float in [0, 1], R = ``model.config.resolution``; moved
    to the model's device (the caller prepares the model: ``runtime.prepare_model``). ``eps``: one or
    more ε (pixel L1 targets, 0-1 scale). ``method``: ``single``, ``search`` or ``prefix``; None is the
    model's default (``methods.default_method``). ``check`` (single; ``methods.resolve_check``):
    ``code`` fills ``code_l1`` from the code's reconstruction (``Tokenizer.code_reconstruction``) with
    no decoder pass (0 decoder runs); ``decoder`` decodes the kept tokens for ``l1`` (and fills
    ``code_l1`` too where the model has it, at almost no cost); ``none`` checks nothing; ``auto``
    (default) is ``code`` where the model has it, else ``decoder``. ``l1=False`` is ``check="none"``
    (kept for older callers). The searches always check with the decoder (they need it to find the
    budget): ``l1`` filled, ``code_l1`` NaN. ``keep_recon`` decodes (the reconstructions are the
    decoder's), so a ``code`` check then becomes ``decoder``. ``need`` (B, E) bool marks the pairs
    wanted (default: all). The scalar results are on the CPU; ``recon`` stays on the model's device.

    Raises UsageError for a method the model lacks, an ε it cannot honour (``methods.check_eps``), a
    check it cannot make (``code`` without a code reconstruction, ``code`` or ``none`` with a search,
    ``l1=False`` beside another explicit check).
    """
    eps_list = [float(eps)] if isinstance(eps, (int, float)) else [float(e) for e in eps]
    method = check_method(model, method)
    if not eps_list or validate_eps(eps_list) != eps_list:
        raise UsageError(f"give distinct positive ε values, got {eps_list}")
    check_eps(model, method, eps_list)
    check = resolve_check(model, method, check, l1)
    if keep_recon and check == "code":
        check = "decoder"       # the reconstructions are the decoder's; its l1 is then free
    dev = model_device(model)
    b, n_eps = images.shape[0], len(eps_list)
    need = torch.ones(b, n_eps, dtype=torch.bool) if need is None else need.to("cpu", torch.bool)
    if need.shape != (b, n_eps):
        raise ValueError(f"need must have shape {(b, n_eps)}, got {tuple(need.shape)}")
    with inference(dev):
        x = to_model_input(images, dev)
        if method != "single":
            r = sweep(model, x, eps_list, method, need=need, keep_recon=keep_recon)
            return Measurement(eps_list, method, r.kc.cpu(), r.kc.float().cpu(), r.l1.cpu(),
                               torch.full((b, n_eps), float("nan")), r.encoder_runs.cpu(), r.decoder_runs.cpu(),
                               r.recon, check=check)
        t_max = model.config.max_tokens
        kc = torch.full((b, n_eps), t_max, dtype=torch.long)
        kc_soft = torch.full((b, n_eps), float(t_max))
        err = torch.full((b, n_eps), float("nan"))
        code_err = torch.full((b, n_eps), float("nan"))
        # The code's L1 rides along with the decoder's where the model has it: ~0.1 ms per image.
        by_code = check != "none" and bool(getattr(model, "reconstructs_from_code", False))
        decode = check == "decoder" or keep_recon
        recon = None
        # One ε over the whole batch keeps the decoder's own tensor (its memory layout too); else a buffer.
        whole = n_eps == 1 and bool(need.all())
        if keep_recon and not whole:
            recon = torch.zeros(b, n_eps, *x.shape[1:], device=dev)
        p_halt = torch.zeros(b, n_eps, t_max) if keep_halting else None
        encodings: list[Encoding | None] | None = [] if keep_encodings else None
        for j, e in enumerate(eps_list):
            sel = need[:, j].nonzero().squeeze(1)
            if sel.numel() == 0:
                if encodings is not None:
                    encodings.append(None)
                continue
            # A subset is encoded alone (not masked out of the whole batch) so resumed runs do no extra work.
            xs = x if sel.numel() == b else x.index_select(0, sel.to(dev))
            enc = model.encode(xs, e)
            kc[sel, j] = enc.kc.cpu()
            kc_soft[sel, j] = enc.kc_soft.float().cpu()
            if keep_halting:
                p_halt[sel, j] = enc.p_halt.float().cpu()
            if encodings is not None:
                encodings.append(enc)
            if by_code:
                code_err[sel, j] = (model.code_reconstruction(enc) - xs).abs().mean(dim=(1, 2, 3)).float().cpu()
            if decode:
                rec = model.decode(enc)
                if check == "decoder":
                    err[sel, j] = (rec - xs).abs().mean(dim=(1, 2, 3)).float().cpu()
                if keep_recon and whole:
                    recon = rec.unsqueeze(1)
                elif recon is not None:
                    recon[sel.to(dev), j] = rec.to(recon.dtype)
    runs = need.long()
    return Measurement(eps_list, method, kc, kc_soft, err, code_err, runs, runs * int(check == "decoder"), recon,
                       p_halt, encodings, check)


def measure_all(model: torch.nn.Module, images: np.ndarray | torch.Tensor, eps: float | Sequence[float],
                method: str | None = None, batch_size: int = IN_MEMORY_BATCH_SIZE, l1: bool = True,
                progress: Progress | None = None, check: str = "auto") -> Measurement:
    """``measure`` over N images in batches of ``batch_size``, concatenated (CPU tensors, no
    reconstructions). ``images``: uint8 (N, R, R, 3) arrays as the loaders give them, or a (N, 3, R, R)
    tensor. ``check`` and ``l1`` as ``measure`` takes them. ``progress(done, total)`` after every batch."""
    if batch_size < 1:
        raise UsageError(f"batch size must be >= 1, got {batch_size}")
    n = len(images)
    parts: list[Measurement] = []
    for i in range(0, n, batch_size):
        chunk = images[i:i + batch_size]
        if isinstance(chunk, np.ndarray):
            chunk = torch.from_numpy(np.ascontiguousarray(chunk.transpose(0, 3, 1, 2)))
        parts.append(measure(model, chunk, eps, method, check=check, l1=l1))
        if progress:
            progress(min(i + batch_size, n), n)
    if not parts:
        raise UsageError("no images to measure")
    first = parts[0]
    fields = ("kc", "kc_soft", "l1", "code_l1", "encoder_runs", "decoder_runs")
    cat = {k: torch.cat([getattr(p, k) for p in parts]) for k in fields}
    return Measurement(first.eps, first.method, **cat, check=first.check)
