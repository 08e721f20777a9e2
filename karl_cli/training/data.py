"""Training data: image folders -> random resized crops (+ flips) at the model resolution.

Crops are a pure function of (seed, epoch, index), so a resumed run sees exactly the images and
crops the interrupted one would have seen. Decoded images can be cached in memory (on by default):
the CPU then spends its time on the model, not on JPEG decoding.
"""
from __future__ import annotations

import math
import os
from typing import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from karl_cli.errors import UsageError
from karl_cli.io.images import ImageLoadError, discover_images, load_max_side
from karl_cli.io.synthetic import random_family_images


def training_files(folders: Iterable[str | os.PathLike]) -> list[str]:
    """Readable-looking image files under ``folders`` (recursive), sorted; errors are skipped later."""
    try:
        found = discover_images(folders)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from None
    files = [f.path for f in found if f.error is None]
    if not files:
        raise UsageError("no images found in " + ", ".join(map(str, folders)))
    return files


class CropDataset(torch.utils.data.Dataset):
    """Random resized crops of the images at ``files``; unreadable images are dropped with a warning."""

    def __init__(self, files: list[str], resolution: int, seed: int = 0, scale: tuple[float, float] = (0.25, 1.0),
                 cache: bool = True) -> None:
        self.resolution = resolution
        self.seed = seed
        self.scale = scale
        self.epoch = 0
        self.max_side = 2 * resolution
        self.cache: list[np.ndarray] | None = None
        self.skipped: list[tuple[str, str]] = []
        if cache:
            self.files, self.cache = [], []
            for f in files:
                try:
                    self.cache.append(load_max_side(f, self.max_side))
                    self.files.append(f)
                except ImageLoadError as e:
                    self.skipped.append((f, str(e)))
            if not self.files:
                raise UsageError("none of the training images could be read")
        else:
            self.files = list(files)

    def __len__(self) -> int:
        return len(self.files)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _image(self, i: int) -> np.ndarray:
        if self.cache is not None:
            return self.cache[i]
        for k in range(len(self.files)):  # an unreadable file: take the next readable one, deterministically
            try:
                return load_max_side(self.files[(i + k) % len(self.files)], self.max_side)
            except ImageLoadError:
                continue
        raise UsageError("none of the training images could be read")

    def __getitem__(self, key: int | tuple[int, int]) -> torch.Tensor:
        """Crop (3, R, R) in [0, 1] of image ``key``: an index (at the epoch of ``set_epoch``) or an
        (epoch, index) pair, so one loader can stream several epochs."""
        epoch, i = key if isinstance(key, tuple) else (self.epoch, key)
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch * 7_919 + i) % 2**63)
        img = torch.from_numpy(self._image(i)).permute(2, 0, 1)
        _, h, w = img.shape
        y0, x0, ch, cw = _crop_box(h, w, self.scale, g)
        crop = img[:, y0:y0 + ch, x0:x0 + cw].unsqueeze(0).float().div_(255.0)
        out = F.interpolate(crop, size=(self.resolution, self.resolution), mode="bilinear",
                            antialias=True, align_corners=False)[0]
        if torch.rand((), generator=g) < 0.5:
            out = out.flip(-1)
        return out.clamp_(0.0, 1.0)


def _crop_box(h: int, w: int, scale: tuple[float, float], g: torch.Generator) -> tuple[int, int, int, int]:
    """A crop covering a random share of the area with aspect ratio in [3/4, 4/3]."""
    area = h * w
    for _ in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * float(torch.rand((), generator=g)))
        ratio = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * float(torch.rand((), generator=g)))
        cw, ch = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            y0 = int(torch.randint(0, h - ch + 1, (), generator=g))
            x0 = int(torch.randint(0, w - cw + 1, (), generator=g))
            return y0, x0, ch, cw
    side = min(h, w)
    return (h - side) // 2, (w - side) // 2, side, side


def epoch_indices(n: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[int]:
    """This rank's share of a seeded permutation; every rank gets the same count (padding by wrap-around)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 31 + epoch)).tolist()
    per_rank = math.ceil(n / world)
    perm = (perm * math.ceil(per_rank * world / n))[: per_rank * world]   # wraps even when world > n
    return perm[rank::world]


class _StepChunks:
    """The (epoch, index) keys of each step's batch, for steps ``start``..``stop - 1``: step s is batch
    s mod per_epoch of epoch s div per_epoch (the last partial batch of an epoch is dropped)."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int, stop: int, rank: int, world: int) -> None:
        self.n, self.batch_size, self.seed, self.start, self.stop = n, batch_size, seed, start, stop
        self.rank, self.world = rank, world
        self.per_epoch = batches_per_epoch(n, batch_size, world)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, idx = -1, []
        for step in range(self.start, self.stop):
            e, b = divmod(step, self.per_epoch)
            if e != epoch:   # one permutation per epoch, drawn when the stream reaches it
                epoch, idx = e, epoch_indices(self.n, self.seed, e, self.rank, self.world)
            yield [(e, i) for i in idx[b * self.batch_size:(b + 1) * self.batch_size]]


def batches(dataset: CropDataset, batch_size: int, seed: int, start_step: int, stop_step: int,
            rank: int = 0, world: int = 1, workers: int = 0, pin_memory: bool = False) -> Iterator[torch.Tensor]:
    """The batches (batch_size, 3, R, R) of steps ``start_step``..``stop_step - 1``, across epochs, from
    one loader: its ``workers`` start once, not once per epoch (an epoch of a small folder is a few
    steps on a GPU). ``pin_memory`` (for CUDA) lets the copy to the GPU overlap with compute."""
    chunks = _StepChunks(len(dataset), batch_size, seed, start_step, stop_step, rank, world)
    if not len(chunks):
        return iter(())
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=chunks, num_workers=workers,
                                         persistent_workers=False, pin_memory=pin_memory)
    return iter(loader)


def batches_per_epoch(n: int, batch_size: int, world: int = 1) -> int:
    return math.ceil(n / world) // batch_size


def sample_crops(data: Iterable[str | os.PathLike], resolution: int, samples: int, synthetic: float, seed: int,
                 device: torch.device, chunk: int = 32) -> Iterator[tuple[int, torch.Tensor]]:
    """``samples`` training crops (area 50-100 %) of the images in ``data``, in chunks of ``chunk``:
    yields (crops so far, x (B, 3, R, R) in [0, 1] on ``device``), a ``synthetic`` share of each chunk
    replaced by procedural images (flat colours to noise, ``io.synthetic``) that crops of photos
    rarely show. A new crop of each image on every pass over the files. What calibration and
    distillation sample their halting labels on."""
    dataset = CropDataset(training_files(data), resolution, seed=seed, scale=(0.5, 1.0))
    rng = np.random.default_rng(seed)
    for start in range(0, samples, chunk):
        ids = [(start + i) % len(dataset) for i in range(min(chunk, samples - start))]
        dataset.set_epoch(start // len(dataset))
        x = torch.stack([dataset[i] for i in ids]).to(device)
        n_syn = int(round(x.shape[0] * synthetic))
        if n_syn:
            syn = random_family_images(n_syn, resolution, rng)
            x[-n_syn:] = torch.from_numpy(syn).permute(0, 3, 1, 2).float().div(255.0).to(x.device)
        yield start + len(ids), x
