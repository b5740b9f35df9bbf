"""Loading an open_clip model (image tower; text tower for text queries) from a hub tag, a local
checkpoint, or seeded random weights."""

from __future__ import annotations

import functools
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from datapool_pipeline.datasets import EmbeddingSpec
from datapool_pipeline.embedding import runtimes
from datapool_pipeline.embedding.fast_cpu import set_cpu_threads
from datapool_pipeline.errors import ConfigError, DatapoolError

_PREFETCH_BATCHES = 2


class ModelLoadError(DatapoolError):
    """The configured weights could not be loaded (never silently replaced by others)."""


def choose_device(requested: str) -> torch.device:
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"embedding.device is {requested!r} but no CUDA device is available; use auto or cpu")
    return torch.device(requested)


def validate_embedding_spec(spec: EmbeddingSpec) -> None:
    """Cheap checks that need no weights: the architecture and pretrained tag exist, and the CPU runtime
    asked for is installed."""
    import open_clip

    runtimes.require(runtimes.requested_runtime(spec.runtime))

    if spec.model not in open_clip.list_models():
        raise ConfigError(
            f"embedding.model {spec.model!r} is not an open_clip architecture "
            f"(see open_clip.list_models(), e.g. ViT-B-32)"
        )
    if spec.pretrained is None or _looks_like_path(spec.pretrained):
        if spec.pretrained is not None and not Path(spec.pretrained).expanduser().is_file():
            raise ConfigError(f"embedding.pretrained: checkpoint file {spec.pretrained} does not exist")
        return
    tags = open_clip.list_pretrained_tags_by_model(spec.model)
    if spec.pretrained not in tags:
        raise ConfigError(
            f"embedding.pretrained {spec.pretrained!r} is not a pretrained tag of {spec.model} "
            f"(known: {', '.join(tags) or 'none'}); or give a local checkpoint path, or none"
        )


def _looks_like_path(value: str) -> bool:
    return "/" in value or os.sep in value or value.endswith((".pt", ".pth", ".bin", ".safetensors"))


@dataclass
class EmbeddingModel:
    model: torch.nn.Module
    image_size: int
    mean: torch.Tensor
    std: torch.Tensor
    device: torch.device
    dim: int
    fingerprint: str
    batch_size: int
    encode: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, repr=False)
    """Normalised NCHW float batch -> features; defaults to model.encode_image (see load_model)."""
    runtime: str = "fp32"
    """What runs the image tower: a CPU runtime of runtimes.RUNTIMES, or cuda-fp16 / mps-fp32."""
    runtime_note: str = ""
    """How the runtime was chosen, with its measured frames/s (for the run's log and asset metadata)."""
    encode_text: Callable[[list[str]], torch.Tensor] | None = field(default=None, repr=False)
    """Texts -> features in the image embedding space (open_clip: its tokenizer + model.encode_text); None
    when the model has no text tower (then text queries are refused)."""

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """Text prompts -> float32 (N, dim), unit norm, in the space of `embed` (same model)."""
        if self.encode_text is None:
            raise ConfigError(
                f"the embedding model {self.fingerprint} has no text tower: text queries (SIMILARITY input.text) "
                "need an open_clip model; use input.keys (query images) instead"
            )
        with torch.inference_mode():
            if self.device.type == "cuda":
                with torch.autocast("cuda", dtype=torch.float16):
                    features = self.encode_text(list(texts))
            else:
                features = self.encode_text(list(texts))
            features = F.normalize(features.float(), dim=-1)
        return features.cpu().numpy().astype(np.float32, copy=False)

    @property
    def precision(self) -> str:
        """The former name of `runtime`."""
        return self.runtime

    def normalise(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 frames (N, S, S, 3) -> the model's normalised float NCHW input on its device."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
        return x.permute(0, 3, 1, 2).float().div_(255.0).sub_(self.mean).div_(self.std)

    def embed(self, frames: np.ndarray) -> np.ndarray:
        """uint8 frames (N, S, S, 3), already resized to image_size, -> float32 (N, dim), unit norm."""
        x = self.normalise(frames)
        encode = self.encode or self.model.encode_image
        with torch.inference_mode():
            if self.device.type == "cuda":
                with torch.autocast("cuda", dtype=torch.float16):
                    features = encode(x)
            else:
                features = encode(x)
            features = F.normalize(features.float(), dim=-1)
        return features.cpu().numpy().astype(np.float32, copy=False)

    def embed_stream(self, frames: Iterable[np.ndarray], prefetch: bool = True) -> Iterator[np.ndarray]:
        """Embed an iterable of single frames in batches; yields one (B, dim) array per batch.

        A background thread pulls frames (ffmpeg decode, pipe reads, stacking) while the model runs
        on the previous batch; torch, ONNX Runtime and OpenVINO release the GIL, so decode and inference
        overlap (`prefetch=False`: one after the other, for measuring what the overlap gains).
        """
        batches = prefetch_batches(frames, self.batch_size) if prefetch else _batches(frames, self.batch_size)
        for batch in batches:
            yield self.embed(batch)


def _batches(frames: Iterable[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    batch: list[np.ndarray] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == batch_size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


def prefetch_batches(
    frames: Iterable[np.ndarray], batch_size: int, depth: int = _PREFETCH_BATCHES
) -> Iterator[np.ndarray]:
    """Stacked batches of `frames`, produced by a background thread up to `depth` batches ahead.

    Exceptions from the source are re-raised in the consumer; if the consumer stops early the
    producer stops at its next batch and the source's own cleanup (e.g. killing ffmpeg) runs.
    """
    q: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: tuple[str, object]) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        iterator = iter(frames)
        try:
            batch: list[np.ndarray] = []
            for frame in iterator:
                batch.append(frame)
                if len(batch) == batch_size:
                    if not put(("batch", np.stack(batch))):
                        return
                    batch = []
            if batch:
                put(("batch", np.stack(batch)))
            put(("end", None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put(("error", exc))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="frame-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, item = q.get()
            if kind == "batch":
                yield item  # type: ignore[misc]
            elif kind == "error":
                raise item  # type: ignore[misc]
            else:
                return
    finally:
        stop.set()
        thread.join()


def load_model(spec: EmbeddingSpec) -> EmbeddingModel:
    return _load_cached(spec)


@functools.lru_cache(maxsize=2)
def _load_cached(spec: EmbeddingSpec) -> EmbeddingModel:
    import open_clip

    validate_embedding_spec(spec)
    device = choose_device(spec.device)
    if spec.pretrained is None:
        # Seeded random weights: reproducible embeddings for tests and offline demos.
        torch.manual_seed(spec.seed)
        model = open_clip.create_model(spec.model, pretrained=None)
    elif _looks_like_path(spec.pretrained):
        try:
            model = open_clip.create_model(spec.model, pretrained=str(Path(spec.pretrained).expanduser()))
        except Exception as exc:
            raise ModelLoadError(
                f"could not load checkpoint {spec.pretrained} into {spec.model}: {type(exc).__name__}: {exc}"
            ) from None
    else:
        try:
            model = open_clip.create_model(spec.model, pretrained=spec.pretrained)
        except Exception as exc:
            raise ModelLoadError(
                f"could not fetch pretrained weights {spec.pretrained!r} for {spec.model} from the model "
                f"hub ({type(exc).__name__}). Without network access, download the checkpoint elsewhere "
                "and set embedding.pretrained to its local path"
            ) from None
    model = model.to(device).eval()
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg.get("size", 224)
    image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
    mean = torch.tensor(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN), device=device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.get("std", open_clip.OPENAI_DATASET_STD), device=device).view(1, 3, 1, 1)
    embedding = EmbeddingModel(
        model=model,
        image_size=image_size,
        mean=mean,
        std=std,
        device=device,
        dim=0,
        fingerprint=spec.fingerprint,
        batch_size=spec.batch_size,
        encode_text=functools.partial(_encode_text, model, spec.model, device),
    )
    requested = runtimes.requested_runtime(spec.runtime)
    if device.type == "cpu":
        set_cpu_threads()
        choice = runtimes.choose(runtimes.prepare_cpu_tower(model.visual), image_size, embedding.normalise,
                                 requested, spec.batch_size, spec.fingerprint)
        embedding.encode, embedding.runtime, embedding.runtime_note = choice.encode, choice.runtime, choice.describe()
        logging.getLogger(__name__).info("%s: embedding runtime %s", spec.model, embedding.runtime_note)
    else:
        # GPUs keep their own arithmetic (CUDA: fp16 autocast); embedding.runtime chooses among CPU runtimes.
        embedding.runtime = "cuda-fp16" if device.type == "cuda" else f"{device.type}-fp32"
        embedding.runtime_note = embedding.runtime + (f" (embedding.runtime {requested} applies to CPUs only)"
                                                      if requested != "auto" else "")
    with torch.inference_mode():
        probe = torch.zeros(1, 3, image_size, image_size, device=device)
        embedding.dim = int((embedding.encode or model.encode_image)(probe).shape[-1])
    return embedding


def _encode_text(model: torch.nn.Module, architecture: str, device: torch.device, texts: list[str]) -> torch.Tensor:
    """open_clip's tokenizer of the architecture (made on first use: some download one) + encode_text."""
    return model.encode_text(_tokenizer(architecture)(texts).to(device))  # type: ignore[operator]


@functools.lru_cache(maxsize=4)
def _tokenizer(architecture: str) -> Callable[[list[str]], torch.Tensor]:
    import open_clip

    return open_clip.get_tokenizer(architecture)
