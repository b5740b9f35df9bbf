"""Shared test helpers (plain functions and constants; the fixtures are in conftest.py): generated media
(real ffmpeg test sources), datasets.yaml, and a tiny deterministic embedder for the fast tier."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from datapool_pipeline.demo import make_image, make_videos

# A real open_clip architecture, small enough for CI (about 45 frames/s on 2 cores), random weights.
TEST_MODEL = "ViT-S-32"


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def write_datasets_yaml(
    path: Path, name: str, dtype: str, input_uri: str, output_uri: str, *, extra: str = ""
) -> Path:
    path.write_text(
        f"""datasets:
  {name}:
    type: {dtype}
    input: {input_uri}
    output: {output_uri}
    embedding:
      model: {TEST_MODEL}
      pretrained: none
      batch_size: 32
{extra}"""
    )
    return path


def add_videos(folder: Path, names: list[str], first_source: int = 0, seconds: float = 5.0, fps: int = 10) -> None:
    """Real H.264 videos from ffmpeg test sources (different source per video)."""
    make_videos(folder, names, first_source=first_source, seconds=seconds, fps=fps)


def add_images(folder: Path, count: int, start: int = 0) -> list[Path]:
    """Still images of varied content: different test sources, times and formats."""
    sources = ["testsrc2", "mandelbrot", "smptehdbars", "rgbtestsrc", "testsrc"]
    paths = []
    for i in range(start, start + count):
        ext = ".png" if i % 2 else ".jpg"
        paths.append(make_image(folder / f"img_{i:04d}{ext}", sources[i % len(sources)], t=(i * 0.7) % 9))
    return paths


def env_without(*names: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in names}


TINY_FINGERPRINT = "tiny-test-embedder"


def tiny_embedder(  # noqa: ANN201
    dim: int = 16, image_size: int = 32, batch_size: int = 8, seed: int = 0, fingerprint: str = TINY_FINGERPRINT
):
    """A deterministic stand-in for an open_clip model, for tests of the workflow and the store: each
    frame is average-pooled to 4x4 and projected by a fixed seeded matrix (a few microseconds per frame, no
    weights to build). Similar pictures get similar embeddings, so selection still behaves sensibly. Its text
    encoder maps each text to a fixed random vector (seeded by the text): it runs SIMILARITY text queries
    end to end but means nothing; what a prompt selects needs an open_clip model with real weights.
    `fingerprint` names its embedding space (the cache key of shard embeddings)."""
    import torch
    import torch.nn.functional as F

    from datapool_pipeline.embedding.model import EmbeddingModel

    generator = torch.Generator().manual_seed(seed)
    projection = torch.randn(3 * 4 * 4, dim, generator=generator)

    def encode(x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, 4).flatten(1) @ projection

    def encode_text(texts: list[str]) -> torch.Tensor:
        # Deterministic, meaningless text features: a vector seeded by the text's hash (plumbing tests only).
        seeds = [int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little") for t in texts]
        return torch.stack([torch.randn(dim, generator=torch.Generator().manual_seed(s)) for s in seeds])

    return EmbeddingModel(
        model=torch.nn.Identity(),
        image_size=image_size,
        mean=torch.full((1, 3, 1, 1), 0.5),
        std=torch.full((1, 3, 1, 1), 0.25),
        device=torch.device("cpu"),
        dim=dim,
        fingerprint=fingerprint,
        batch_size=batch_size,
        encode=encode,
        encode_text=encode_text,
    )
