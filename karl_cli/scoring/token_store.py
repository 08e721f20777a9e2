"""A folder of KARL tokens: what ``karl encode`` writes and ``karl decode`` reads.

Layout of ``OUT/`` (``SFX`` is empty, or ``.shard-K-of-N`` for ``--shard K/N``, so shards of one job
can share a folder):

- ``tokens{SFX}-00000.safetensors`` ...: ``tokens`` float32 (Σkc, latent_dim), the kept tokens of a
  run of images, concatenated; ``positions`` int16 (Σkc,), each token's index among the T_max
  latent slots; ``offsets`` int64 (n_images + 1,), where each image's tokens start. The metadata
  names the format, model id and ε.
- ``index{SFX}.csv``: one row per image, ``INDEX_FIELDS``: path, kc, shard (file name), offset (first
  token row in that shard), eps, model_id, method (``single``: the tokens one encoder pass keeps),
  status, error, and ``name`` (the PNG name used by
  ``--recon`` and ``karl decode``, relative to their output folder).
- ``index{SFX}.json``: a manifest (format, model id, ε, sizes, counts, shard files).

Decoding scatters an image's kept tokens into a zero (T_max, latent_dim) tensor with the matching
keep mask and calls ``model.decode``. Reconstructions are decoded in fixed chunks of
``DECODE_CHUNK`` images in index order, by both ``encode_folder(recon_dir=...)`` and
``decode_folder``, so the two give bit-identical PNGs on the same device and software.
Every file is written atomically.
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from karl_cli.io.atomic import atomic_path, atomic_write_text
from karl_cli.io.outputs import Output, check_outputs
from karl_cli.io.rows import RowWriter, csv_header, read_rows
from karl_cli.scoring.measure import Progress, apply_shard, collect_inputs, image_batches, measure, parse_shard
from karl_cli.scoring.methods import check_eps, validate_eps
from karl_cli.defaults import BATCH_SIZE
from karl_cli.errors import UsageError
from karl_cli.io.images import Found
from karl_cli.runtime import inference, model_device, prepare_model, resolve_device
from karl_cli.models.tokenizer import Encoding
from karl_cli.models.pretrained import model_id

FORMAT = "karl-tokens/1"
INDEX_FIELDS = ["path", "kc", "shard", "offset", "eps", "model_id", "method", "status", "error", "name"]
DECODE_CHUNK = 64
IMAGES_PER_SHARD = 4096


def recon_names(paths: Sequence[str]) -> dict[str, str]:
    """A unique relative PNG name per input path: the path below the inputs' common folder with
    ``.png`` for its suffix (``.ext.png`` where two inputs would collide)."""
    if not paths:
        return {}
    absd = [os.path.abspath(p) for p in paths]
    root = os.path.commonpath([os.path.dirname(a) for a in absd])
    rels = [os.path.relpath(a, root) for a in absd]
    base = [os.path.splitext(r)[0] + ".png" for r in rels]
    counts = Counter(base)
    names = [b if counts[b] == 1 else r + ".png" for r, b in zip(rels, base)]
    seen: Counter[str] = Counter()
    out = {}
    for p, n in zip(paths, names):
        seen[n] += 1
        out[p] = n if seen[n] == 1 else f"{os.path.splitext(n)[0]}~{seen[n]}.png"
    return out


def _suffix(shard: tuple[int, int] | None) -> str:
    return "" if shard is None else f".shard-{shard[0]}-of-{shard[1]}"


def _assemble(parts: Sequence[tuple[torch.Tensor, torch.Tensor]], max_tokens: int, latent_dim: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Scatter each image's kept (tokens, positions) into zero latents (n, T_max, d) + keep mask."""
    z = torch.zeros(len(parts), max_tokens, latent_dim, dtype=torch.float32)
    keep = torch.zeros(len(parts), max_tokens, dtype=torch.bool)
    for i, (tok, pos) in enumerate(parts):
        pos = pos.long()
        z[i, pos] = tok.float()
        keep[i, pos] = True
    return z, keep


def _decode_parts(model: torch.nn.Module, parts: Sequence[tuple[torch.Tensor, torch.Tensor]],
                  device: torch.device) -> np.ndarray:
    """uint8 images (n, R, R, 3) decoded from kept tokens."""
    cfg = model.config
    z, keep = _assemble(parts, cfg.max_tokens, cfg.latent_dim)
    with inference(device):
        rec = model.decode(Encoding(z, torch.zeros(keep.shape), keep, 0.0))
    return rec.mul(255.0).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _safe_target(out_dir: Path, name: str) -> Path:
    if not name or os.path.isabs(name) or ".." in Path(name).parts:
        raise UsageError(f"refusing to write outside the output folder: {name!r}")
    return out_dir / name


def _save_png(array: np.ndarray, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        Image.fromarray(array, "RGB").save(tmp, format="PNG")


class _ReconWriter:
    """Decodes kept tokens in fixed chunks of DECODE_CHUNK (index order) and saves PNGs."""

    def __init__(self, model: torch.nn.Module, device: torch.device, out_dir: Path | None) -> None:
        self.model, self.device, self.out_dir = model, device, out_dir
        self.pending: list[tuple[str, torch.Tensor, torch.Tensor]] = []
        self.written = 0

    def add(self, name: str, tokens: torch.Tensor, positions: torch.Tensor) -> None:
        if self.out_dir is None:
            return
        self.pending.append((name, tokens, positions))
        if len(self.pending) >= DECODE_CHUNK:
            self.flush()

    def flush(self) -> None:
        while self.pending:
            chunk, self.pending = self.pending[:DECODE_CHUNK], self.pending[DECODE_CHUNK:]
            images = _decode_parts(self.model, [(t, p) for _, t, p in chunk], self.device)
            for (name, _, _), img in zip(chunk, images):
                _save_png(img, _safe_target(self.out_dir, name))
                self.written += 1


@dataclass
class EncodeResult:
    index: Path
    model_id: str
    ok: int
    error: int
    shards: list[str]
    recon: int = 0


@dataclass
class DecodeResult:
    images: int
    indexes: list[Path]


def encode_folder(paths: str | os.PathLike | Iterable[str | os.PathLike | Found], model: torch.nn.Module,
                  eps: float, out_dir: str | os.PathLike, recon_dir: str | os.PathLike | None = None,
                  batch_size: int = BATCH_SIZE, workers: int = 0, device: str | torch.device | None = None,
                  shard: str | Sequence[int] | None = None, images_per_shard: int = IMAGES_PER_SHARD,
                  progress: Progress | None = None, inputs: Sequence[str | os.PathLike] | None = None,
                  files_from: str | os.PathLike | None = None, allow_inside_inputs: bool = False) -> EncodeResult:
    """Encode every image at ε (one encoder pass per batch) and store its kept tokens in ``out_dir``.

    ``recon_dir`` also saves each reconstruction as PNG. Unreadable files become error rows of the
    index. ``shard`` ("K/N") encodes only files i % N == K of the sorted list.

    Before any work, ``UsageError`` if ``out_dir`` or ``recon_dir`` is (or lies inside) an input folder
    (unless ``allow_inside_inputs``) or a reconstruction would replace an input (``io.outputs``).
    ``inputs``: the paths as the user gave them (default: the non-``Found`` items of ``paths``);
    ``files_from``: the file list they came from, if any.
    """
    eps_v = validate_eps(eps)
    if len(eps_v) != 1:
        raise UsageError("encode takes exactly one ε")
    eps_f = eps_v[0]
    check_eps(model, "single", eps_v)
    if images_per_shard < 1:
        raise UsageError("images_per_shard must be >= 1")
    dev = resolve_device(device, model)
    shard_t = parse_shard(shard)
    given = [paths] if isinstance(paths, (str, bytes, os.PathLike, Found)) else list(paths)
    every = collect_inputs(given)
    names = recon_names([f.path for f in every])
    named = [p for p in given if not isinstance(p, Found)] if inputs is None else inputs
    check_outputs([Output("--out", out_dir, "folder")] + ([Output("--recon", recon_dir, "folder")] if recon_dir else []),
                  named, every, files_from, allow_inside_inputs=allow_inside_inputs)
    if recon_dir is not None:   # inputs given as files can share a folder with the reconstructions
        check_outputs([Output("--recon", Path(recon_dir) / names[f.path]) for f in every], named, every, files_from)
    items = apply_shard(every, shard_t)
    prepare_model(model, dev)
    cfg = model.config
    if cfg.max_tokens > np.iinfo(np.int16).max:
        raise UsageError("max_tokens too large for int16 positions")
    mid = model_id(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sfx = _suffix(shard_t)
    recon = _ReconWriter(model, dev, Path(recon_dir) if recon_dir is not None else None)
    shard_files: list[str] = []
    buf_tok: list[torch.Tensor] = []
    buf_pos: list[torch.Tensor] = []
    buf_off: list[int] = [0]
    n_ok = n_err = 0

    def flush_shard() -> None:
        if len(buf_off) == 1:
            return
        fname = f"tokens{sfx}-{len(shard_files):05d}.safetensors"
        tensors = {"tokens": torch.cat(buf_tok).contiguous(), "positions": torch.cat(buf_pos).contiguous(),
                   "offsets": torch.tensor(buf_off, dtype=torch.int64)}
        meta = {"format": FORMAT, "model_id": mid, "eps": repr(eps_f), "max_tokens": str(cfg.max_tokens),
                "latent_dim": str(cfg.latent_dim)}
        with atomic_path(out / fname) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        shard_files.append(fname)
        buf_tok.clear()
        buf_pos.clear()
        del buf_off[1:]

    index_path = out / f"index{sfx}.csv"
    total, done = len(items), 0
    if progress:
        progress(0, total)
    # The index is valid only with every token file it names: a failed or interrupted run keeps the old one.
    with RowWriter(index_path, INDEX_FIELDS, keep_partial=False) as index:
        for batch in image_batches(items, cfg.resolution, batch_size, workers, pin_memory=dev.type == "cuda"):
            paths_b, errors = batch["paths"], batch["errors"]
            if batch["images"] is not None:
                (enc,) = measure(model, batch["images"], [eps_f], "single", l1=False, keep_encodings=True).encodings
                keep = enc.keep.cpu()
                latents = enc.latents.float().cpu()
                kc = keep.sum(1).tolist()
                kept = latents[keep]                                  # (Σkc, d), image by image
                pos = keep.nonzero()[:, 1].to(torch.int16)
                starts = np.concatenate([[0], np.cumsum(kc)]).tolist()
            j = 0
            for path, err in zip(paths_b, errors):
                row = {"path": path, "kc": None, "shard": None, "offset": None, "eps": eps_f, "model_id": mid,
                       "method": "single", "status": "error", "error": err, "name": names[path]}
                if err is None:
                    tok_i, pos_i = kept[starts[j]:starts[j + 1]], pos[starts[j]:starts[j + 1]]
                    row.update(kc=kc[j], shard=f"tokens{sfx}-{len(shard_files):05d}.safetensors",
                               offset=buf_off[-1], status="ok")
                    buf_tok.append(tok_i)
                    buf_pos.append(pos_i)
                    buf_off.append(buf_off[-1] + kc[j])
                    recon.add(names[path], tok_i, pos_i)
                    n_ok += 1
                    j += 1
                else:
                    n_err += 1
                index.write(row)
            if len(buf_off) - 1 >= images_per_shard:
                flush_shard()
            done += len(paths_b)
            if progress:
                progress(done, total)
        flush_shard()
        recon.flush()
    # Shards left by an earlier, bigger run of the same job would only confuse readers.
    pattern = re.compile(rf"tokens{re.escape(sfx)}-(\d{{5}})\.safetensors")
    for p in out.iterdir():
        m = pattern.fullmatch(p.name)
        if m and int(m.group(1)) >= len(shard_files):
            p.unlink()
    manifest = {"format": FORMAT, "model_id": mid, "eps": eps_f, "max_tokens": cfg.max_tokens,
                "latent_dim": cfg.latent_dim, "resolution": cfg.resolution, "decode_chunk": DECODE_CHUNK,
                "images": n_ok + n_err, "ok": n_ok, "error": n_err, "shard": list(shard_t) if shard_t else None,
                "token_files": shard_files}
    atomic_write_text(out / f"index{sfx}.json", json.dumps(manifest, indent=2) + "\n")
    return EncodeResult(index_path, mid, n_ok, n_err, shard_files, recon.written)


def read_tokens(token_dir: str | os.PathLike, shard_file: str) -> dict[str, torch.Tensor]:
    """The tensors of one token file, checked for the expected names."""
    path = Path(token_dir) / shard_file
    if Path(shard_file).name != shard_file:
        raise UsageError(f"bad token file name in index: {shard_file!r}")
    try:
        t = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise UsageError(f"cannot read token file {path}: {e}") from None
    missing = {"tokens", "positions", "offsets"} - set(t)
    if missing:
        raise UsageError(f"{path} lacks tensors: {', '.join(sorted(missing))}")
    return t


def decode_folder(token_dir: str | os.PathLike, model: torch.nn.Module, out_dir: str | os.PathLike,
                  device: str | torch.device | None = None, progress: Progress | None = None) -> DecodeResult:
    """Rebuild every ``ok`` image of a ``karl encode`` folder as PNG in ``out_dir`` (names from the
    index). Refuses a model whose id differs from the one that encoded the tokens."""
    src = Path(token_dir)
    if not src.is_dir():
        raise UsageError(f"no such folder: {src}")
    indexes = sorted(p for p in src.iterdir() if re.fullmatch(r"index(\.shard-\d+-of-\d+)?\.csv", p.name))
    if not indexes:
        raise UsageError(f"{src} holds no index.csv: is it the output of `karl encode`?")
    dev = resolve_device(device, model) if device is not None else model_device(model)
    prepare_model(model, dev)
    mid = model_id(model)
    per_index = []
    for ip in indexes:
        lacking = [k for k in INDEX_FIELDS if k not in csv_header(ip) and k != "method"]   # older indexes lack it
        if lacking:
            raise UsageError(f"{ip} is not an index written by `karl encode` (no {', '.join(lacking)} column)")
        rows = [r for r in read_rows(ip) if r.get("status") == "ok"]
        for r in rows:
            if not (isinstance(r.get("shard"), str) and isinstance(r.get("offset"), int) and r["offset"] >= 0
                    and isinstance(r.get("kc"), int) and r["kc"] >= 0 and r.get("name")):
                raise UsageError(f"{ip} is damaged: the row for {r.get('path')!r} lacks a valid shard, offset, "
                                 "kc or name; encode the images again")
        ids = sorted({str(r.get("model_id")) for r in rows})
        if any(i != mid for i in ids):
            raise UsageError(f"{ip.name} was encoded by model {', '.join(ids)}, but the weights given are model "
                             f"{mid}: decode with the weights used for `karl encode`")
        chunk_size = DECODE_CHUNK
        manifest = ip.with_suffix(".json")
        if manifest.is_file():
            try:
                chunk_size = int(json.loads(manifest.read_text(encoding="utf-8")).get("decode_chunk", DECODE_CHUNK))
            except (ValueError, TypeError, AttributeError):
                raise UsageError(f"{manifest} is not a valid karl manifest") from None
        per_index.append((rows, max(1, chunk_size)))
    out = Path(out_dir)
    total = sum(len(r) for r, _ in per_index)
    done = 0
    if progress:
        progress(0, total)
    cache: dict[str, dict[str, torch.Tensor]] = {}
    for rows, chunk_size in per_index:
        for c in range(0, len(rows), chunk_size):
            chunk = rows[c:c + chunk_size]
            parts = []
            for r in chunk:
                if r["shard"] not in cache:
                    cache.clear()   # token files are read in order: keep one in memory
                    cache[r["shard"]] = read_tokens(src, r["shard"])
                t = cache[r["shard"]]
                a, b = int(r["offset"]), int(r["offset"]) + int(r["kc"])
                if b > t["tokens"].shape[0]:
                    raise UsageError(f"index row for {r['path']} points past the end of {r['shard']}")
                parts.append((t["tokens"][a:b], t["positions"][a:b]))
            images = _decode_parts(model, parts, dev)
            for r, img in zip(chunk, images):
                _save_png(img, _safe_target(out, str(r["name"])))
            done += len(chunk)
            if progress:
                progress(done, total)
    return DecodeResult(done, indexes)
