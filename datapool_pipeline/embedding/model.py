"""Loading an open_clip image tower from a hub tag, a local checkpoint, or seeded random weights."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from datapool_pipeline.datasets import EmbeddingSpec
from datapool_pipeline.errors import ConfigError, DatapoolError


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
    """Cheap checks that need no weights: the architecture and pretrained tag exist."""
    import open_clip

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

    def embed(self, frames: np.ndarray) -> np.ndarray:
        """uint8 frames (N, S, S, 3), already resized to image_size, -> float32 (N, dim), unit norm."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        x = (x - self.mean) / self.std
        with torch.inference_mode():
            if self.device.type == "cuda":
                with torch.autocast("cuda", dtype=torch.float16):
                    features = self.model.encode_image(x)
            else:
                features = self.model.encode_image(x)
            features = F.normalize(features.float(), dim=-1)
        return features.cpu().numpy().astype(np.float32, copy=False)

    def embed_stream(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Embed an iterable of single frames in batches; yields one (B, dim) array per batch."""
        batch: list[np.ndarray] = []
        for frame in frames:
            batch.append(frame)
            if len(batch) == self.batch_size:
                yield self.embed(np.stack(batch))
                batch = []
        if batch:
            yield self.embed(np.stack(batch))


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
    with torch.inference_mode():
        dim = int(model.encode_image(torch.zeros(1, 3, image_size, image_size, device=device)).shape[-1])
    return EmbeddingModel(
        model=model,
        image_size=image_size,
        mean=mean,
        std=std,
        device=device,
        dim=dim,
        fingerprint=spec.fingerprint,
        batch_size=spec.batch_size,
    )
