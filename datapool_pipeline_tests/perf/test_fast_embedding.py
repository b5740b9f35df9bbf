"""The CPU runtimes stay within cosine 0.99 of the unmodified fp32 model (real open_clip architecture,
seeded random weights, frames of ffmpeg test sources), `auto` picks one of the valid runtimes, an explicit
runtime is honoured, a missing optional runtime names its extra, and the prefetching stream keeps order and
surfaces errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from datapool_pipeline.datasets import EmbeddingSpec
from datapool_pipeline.embedding import model as emb
from datapool_pipeline.embedding import runtimes
from datapool_pipeline.embedding.fast_cpu import ClassTokenLastBlock, FusedSelfAttention, optimize_visual_for_cpu
from datapool_pipeline.embedding.model import prefetch_batches
from datapool_pipeline.errors import ConfigError
from datapool_pipeline.media.image import decode_image, resize_center_crop
from datapool_pipeline_tests.helpers import TEST_MODEL, add_images


def reference(frames: np.ndarray) -> np.ndarray:
    torch.manual_seed(0)
    model = open_clip.create_model(TEST_MODEL, pretrained=None).eval()
    cfg = open_clip.get_model_preprocess_cfg(model)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.inference_mode():
        return F.normalize(model.encode_image(x), dim=-1).numpy()


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(4, 224, 224, 3), dtype=np.uint8)
    noise = rng.integers(-20, 20, size=(8, 224, 224, 3))
    return np.clip(base[np.arange(8) % 4].astype(int) + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def real_frames(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """Model-size frames of four ffmpeg test sources (JPEG and PNG), decoded as the pipeline decodes them."""
    paths = add_images(tmp_path_factory.mktemp("images"), 4)
    return np.stack([resize_center_crop(decode_image(Path(p).read_bytes()), 224) for p in paths])


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_cosine_to_fp32_reference(frames: np.ndarray, precision: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATAPOOL_CPU_PRECISION", precision)  # the former name of DATAPOOL_EMBEDDING_RUNTIME
    emb._load_cached.cache_clear()
    try:
        model = emb.load_model(EmbeddingSpec(model=TEST_MODEL, pretrained=None, batch_size=4, device="cpu"))
        ours = np.concatenate(list(model.embed_stream(iter(frames))))
    finally:
        emb._load_cached.cache_clear()
    assert model.runtime == precision
    assert ours.dtype == np.float32 and np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    cosine = np.sum(ours * reference(frames), axis=1)
    assert cosine.min() >= (0.9999 if precision == "fp32" else 0.99)


def test_auto_picks_a_valid_runtime_and_an_explicit_one_is_honoured(real_frames: np.ndarray) -> None:
    """auto: one of this CPU's candidates (torch runtimes here; optional ones are covered by the benchmark),
    cosine >= 0.99 to fp32 on real frames; runtime int8 set explicitly is what runs."""
    torch.manual_seed(0)
    model = open_clip.create_model(TEST_MODEL, pretrained=None).eval()
    cfg = open_clip.get_model_preprocess_cfg(model)
    mean, std = torch.tensor(cfg["mean"]).view(1, 3, 1, 1), torch.tensor(cfg["std"]).view(1, 3, 1, 1)

    def normalise(frames: np.ndarray) -> torch.Tensor:
        return (torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0 - mean) / std

    with torch.inference_mode():
        expected = F.normalize(model.encode_image(normalise(real_frames)), dim=-1).numpy()  # unmodified fp32
    tower = runtimes.prepare_cpu_tower(model.visual)
    candidates = ["int8", "fp32", *(["bf16"] if runtimes.native_bf16() else [])]
    for requested in ("auto", "int8"):
        choice = runtimes.calibrate(tower, 224, normalise, requested, batch_size=4, candidates=candidates)
        assert choice.runtime in (candidates if requested == "auto" else [requested])
        assert {t.runtime for t in choice.trials} == set(candidates if requested == "auto" else [requested])
        assert choice.chosen.min_cosine >= runtimes.MIN_COSINE and choice.chosen.frames_per_s > 0
        assert choice.runtime in choice.describe()
        with torch.inference_mode():
            ours = F.normalize(choice.encode(normalise(real_frames)).float(), dim=-1).numpy()
        assert np.sum(ours * expected, axis=1).min() >= runtimes.MIN_COSINE


def test_missing_optional_runtime_names_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed: `import onnxruntime` fails
    monkeypatch.setitem(sys.modules, "openvino", None)
    spec = EmbeddingSpec(model=TEST_MODEL, pretrained=None, device="cpu", runtime="onnx-int8")
    with pytest.raises(ConfigError, match=r"^embedding\.runtime onnx-int8 needs onnxruntime( and onnx)?: pip install "
                       r"'datapool_pipeline\[onnx\]'"):
        emb.validate_embedding_spec(spec)  # called by load_model before the weights are built
    assert "onnx-int8" not in runtimes.auto_candidates() and "openvino" not in runtimes.auto_candidates()
    monkeypatch.setenv("DATAPOOL_EMBEDDING_RUNTIME", "openvino")
    with pytest.raises(ConfigError, match=r"datapool_pipeline\[openvino\]"):
        emb.validate_embedding_spec(EmbeddingSpec(model=TEST_MODEL, pretrained=None))


def test_prefetch_keeps_order_and_reraises() -> None:
    items = [np.full((2, 2, 3), i, np.uint8) for i in range(10)]
    batches = list(prefetch_batches(iter(items), 4))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert [int(f[0, 0, 0]) for b in batches for f in b] == list(range(10))

    def failing():  # noqa: ANN202
        yield from items[:5]
        raise RuntimeError("decoder died")

    with pytest.raises(RuntimeError, match="decoder died"):
        list(prefetch_batches(failing(), 4))


def test_bad_runtime_setting_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATAPOOL_EMBEDDING_RUNTIME", "fp8")
    with pytest.raises(ConfigError, match="DATAPOOL_EMBEDDING_RUNTIME must be one of auto, fp32, int8, bf16, onnx"):
        runtimes.requested_runtime()


@pytest.mark.parametrize("batch_first", [True, False])
def test_fused_attention_equals_multihead_attention(batch_first: bool) -> None:
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(64, 4, batch_first=batch_first).eval()
    fused = FusedSelfAttention(mha).eval()
    x, q = torch.randn(2, 10, 64), torch.randn(2, 3, 64)
    if not batch_first:
        x, q = x.transpose(0, 1), q.transpose(0, 1)
    with torch.inference_mode():
        assert torch.allclose(fused(x, x, x)[0], mha(x, x, x, need_weights=False)[0], atol=1e-5)
        assert torch.equal(fused(q, x, x)[0], mha(q, x, x, need_weights=False)[0])  # cross: delegated


@pytest.mark.slow
@pytest.mark.parametrize("pool_type", ["tok", "avg"])
def test_class_token_last_block_only_where_it_is_exact(pool_type: str) -> None:
    """The last block runs for the class token alone when the tower outputs that token, and gives
    the same features; an average-pooled tower needs every token and keeps its full last block."""
    torch.manual_seed(0)
    model = open_clip.create_model(TEST_MODEL, pretrained=None).eval()
    model.visual.pool_type = pool_type
    x = torch.randn(3, 3, 224, 224)
    with torch.inference_mode():
        expected = model.visual(x)
        fast = optimize_visual_for_cpu(model.visual, "fp32")
        got = fast(x)
    assert isinstance(fast.transformer.resblocks[-1], ClassTokenLastBlock) == (pool_type == "tok")
    assert torch.allclose(got, expected, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize(("key", "configured"), [("runtime", "fp32"), ("precision", "int8")])
def test_runtime_comes_from_datasets_yaml(key: str, configured: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`runtime`, and `precision`, its former name, choose what runs the tower through load_model."""
    monkeypatch.delenv("DATAPOOL_EMBEDDING_RUNTIME", raising=False)
    monkeypatch.delenv("DATAPOOL_CPU_PRECISION", raising=False)
    emb._load_cached.cache_clear()
    try:
        model = emb.load_model(EmbeddingSpec(model=TEST_MODEL, pretrained=None, device="cpu", **{key: configured}))
    finally:
        emb._load_cached.cache_clear()
    assert model.runtime == configured and configured in model.runtime_note


@pytest.mark.parametrize(("embedding", "message"), [
    ("{precision: fp8}", r"datasets\.d\.embedding\.precision: must be one of auto, int8, fp32, bf16 \(the former"),
    ("{precision: int8, runtime: fp32}", r"datasets\.d\.embedding\.precision: is the former name of runtime"),
    ("{runtime: tensorrt}", r"datasets\.d\.embedding\.runtime: must be one of auto, fp32, int8, bf16, onnx, "),
])
def test_bad_runtime_in_datasets_yaml_names_the_key(tmp_path: Path, embedding: str, message: str) -> None:
    from datapool_pipeline.datasets import load_datasets

    path = tmp_path / "datasets.yaml"
    path.write_text(f"datasets:\n  d:\n    type: IMAGES\n    input: {tmp_path / 'i'}\n    output: {tmp_path / 'o'}\n"
                    f"    embedding: {embedding}\n")
    with pytest.raises(ConfigError, match=message):
        load_datasets(path)


def test_former_precision_key_still_reads_and_keeps_the_fingerprint() -> None:
    old, new = EmbeddingSpec(precision="int8"), EmbeddingSpec(runtime="int8")
    assert old == new and old.fingerprint == EmbeddingSpec(runtime="fp32").fingerprint


def test_auto_choice_is_cached_per_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first auto load calibrates and records its choice; the next load of the same model builds that
    runtime only (checked against fp32); a different model calibrates; a damaged record is measured again."""
    monkeypatch.setenv("DATAPOOL_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(runtimes, "auto_candidates", lambda flags=None: ["int8", "fp32"])
    torch.manual_seed(0)
    tower = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 64), torch.nn.GELU(),
                                torch.nn.Linear(64, 16)).eval()

    def normalise(frames: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0 - 0.5

    def choose(model_key: str) -> runtimes.Choice:
        return runtimes.choose(tower, 32, normalise, "auto", 8, model_key)

    first = choose("tiny|a")
    assert not first.cached and {t.runtime for t in first.trials} == {"int8", "fp32"}
    (record,) = (tmp_path / "calibration").glob("*.json")
    again = choose("tiny|a")
    assert again.cached and again.runtime == first.runtime and [t.runtime for t in again.trials] == [first.runtime]
    assert "auto, cached calibration" in again.describe()
    assert not choose("tiny|b").cached  # another model: its own calibration
    record.write_text("{not json")
    assert not choose("tiny|a").cached
    assert runtimes.choose(tower, 32, normalise, "fp32", 8, "tiny|a").runtime == "fp32"  # explicit: as set
