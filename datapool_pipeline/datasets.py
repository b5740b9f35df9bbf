"""datasets.yaml: loading and validation of the per-dataset settings."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from datapool_pipeline.config import parse_run_config
from datapool_pipeline.errors import ConfigError
from datapool_pipeline.media.image import DEFAULT_MAX_DECODED_MEGABYTES

DEFAULT_DATASETS_FILE = "datasets.yaml"
DATASETS_ENV = "DATAPOOL_DATASETS"
DATASET_TYPES = ("IMAGES", "VIDEOS")
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")
_URI_SCHEMES = ("file://", "s3://", "gs://", "az://")
EMBEDDING_PRECISIONS = ("auto", "int8", "fp32", "bf16")


@dataclass(frozen=True)
class EmbeddingSpec:
    """Which open_clip model embeds a dataset's samples. Fixed per dataset: changing it re-embeds."""

    model: str = "ViT-B-32"
    pretrained: str | None = "laion2b_s34b_b79k"
    batch_size: int = 32
    device: str = "auto"
    seed: int = 0
    precision: str = "auto"
    """CPU arithmetic: auto (= int8), int8, fp32 or bf16. Not part of the fingerprint: every choice
    stays within cosine 0.999 of fp32, so cached embeddings remain comparable."""

    @property
    def fingerprint(self) -> str:
        """Identifies the embedding space; cached embeddings are only reused under the same one."""
        pretrained = self.pretrained or f"none-seed{self.seed}"
        if self.pretrained and os.path.sep in self.pretrained:
            stat = Path(self.pretrained).stat() if Path(self.pretrained).exists() else None
            pretrained = f"{Path(self.pretrained).name}-{stat.st_size if stat else 0}"
        return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{self.model}--{pretrained}")


@dataclass(frozen=True)
class VideoSpec:
    """Frame extraction settings for VIDEOS datasets (defaults keep every frame)."""

    fps: float | None = None
    skip_duplicates: bool = False
    """Drop frames that barely differ from the previous kept one (ffmpeg mpdecimate)."""
    scene_threshold: float | None = None
    """Keep only frames whose scene-change score (0..1) exceeds this (ffmpeg select=gt(scene,T))."""

    def frame_options(self) -> dict[str, object]:
        """Keyword arguments for FrameStream / extract_frames_png (same options = same frame indices)."""
        return {"fps": self.fps, "skip_duplicates": self.skip_duplicates, "scene_threshold": self.scene_threshold}


@dataclass(frozen=True)
class ImageSpec:
    """Image decoding limits for IMAGES datasets."""

    max_decoded_megabytes: int = DEFAULT_MAX_DECODED_MEGABYTES
    """Peak memory (MB, 2^20 bytes) one image's decode may take, computed from its header before decoding;
    an image above it is skipped with the reason."""


@dataclass(frozen=True)
class SensorSpec:
    """The dataset's sensor: watches the input and requests a run per batch of new files."""

    enabled: bool = False
    """Running by default when the code location loads; false: stopped until turned on in the UI."""
    minimum_interval_seconds: int = 60
    files_per_run: int = 100
    """New raw files per requested run (a run covers whole shards, so it may hold a few more)."""
    max_runs_per_tick: int = 10
    max_objects_per_tick: int = 20_000
    """Objects listed per tick; the cursor resumes the listing on the next tick."""
    run_config: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SENSOR_RUN_CONFIG), hash=False)


DEFAULT_SENSOR_RUN_CONFIG: dict[str, Any] = {
    "worker_config": {"use_datapool": True},
    "selection_config": {"proportion_samples": 0.1},
}


@dataclass(frozen=True)
class CredentialsSpec:
    """Which environment variables hold the object-store credentials of a dataset's input and output:
    a prefix such as RAW reads RAW_AWS_ACCESS_KEY_ID, RAW_AZURE_STORAGE_SAS_TOKEN... (docs/object-stores.md);
    None reads the standard, unprefixed variables."""

    input: str | None = None
    output: str | None = None

    def env_prefix(self, side: str) -> str:
        """'RAW_' for a side configured with prefix RAW, '' for the standard variables."""
        prefix = self.input if side == "input" else self.output
        return f"{prefix}_" if prefix else ""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    type: str
    input: str
    output: str
    embedding: EmbeddingSpec = field(default_factory=EmbeddingSpec)
    video: VideoSpec = field(default_factory=VideoSpec)
    images_per_shard: int = 256
    seed: int = 0
    bypass_verify: bool = False
    """Skip the run-start check that the input is readable and the output writable."""
    sensor: SensorSpec = field(default_factory=SensorSpec)
    backfill_shards_per_run: int | None = None
    """Shards per run of a frames/embeddings backfill; None: the whole backfill is one run."""
    credentials: CredentialsSpec = field(default_factory=CredentialsSpec)
    """Environment-variable prefixes of the input's and the output's object-store credentials."""
    owners: tuple[str, ...] = ()
    """Owners of the dataset's assets in the Dagster UI: e-mail addresses or `team:<name>`."""
    images: ImageSpec = field(default_factory=ImageSpec)

    @property
    def asset_prefix(self) -> str:
        return self.name.replace("-", "_")


def datasets_file(path: str | os.PathLike[str] | None = None) -> Path:
    return Path(path or os.environ.get(DATASETS_ENV) or DEFAULT_DATASETS_FILE)


def load_datasets(path: str | os.PathLike[str] | None = None) -> dict[str, DatasetSpec]:
    """Read and validate datasets.yaml; relative local paths are resolved against its folder."""
    file = datasets_file(path)
    if not file.exists():
        raise ConfigError(
            f"datasets file {file} not found: pass --datasets FILE or set {DATASETS_ENV}"
        )
    try:
        raw = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file} is not valid YAML: {exc}") from None
    return parse_datasets(raw, base_dir=file.resolve().parent, source=str(file))


def parse_datasets(raw: Any, base_dir: Path, source: str = "datasets.yaml") -> dict[str, DatasetSpec]:
    if not isinstance(raw, dict) or not isinstance(raw.get("datasets"), dict) or not raw["datasets"]:
        raise ConfigError(f"{source}: expected a top-level 'datasets:' mapping of dataset name -> settings")
    unknown = set(raw) - {"datasets"}
    if unknown:
        raise ConfigError(f"{source}: unknown top-level key(s) {sorted(unknown)}; only 'datasets' is allowed")
    specs: dict[str, DatasetSpec] = {}
    prefixes: dict[str, str] = {}
    for name, body in raw["datasets"].items():
        spec = _parse_dataset(str(name), body, base_dir, source)
        if spec.asset_prefix in prefixes:
            raise ConfigError(
                f"{source}: datasets '{prefixes[spec.asset_prefix]}' and '{name}' map to the same "
                "Dagster asset prefix; rename one"
            )
        prefixes[spec.asset_prefix] = spec.name
        specs[spec.name] = spec
    _check_outputs_apart(specs, source)
    return specs


def locations_overlap(a: str, b: str) -> bool:
    """True when one location is the other or lies inside it (compared by whole path segments)."""
    a, b = a.rstrip("/") + "/", b.rstrip("/") + "/"
    return a.startswith(b) or b.startswith(a)


def _check_outputs_apart(specs: dict[str, DatasetSpec], source: str) -> None:
    """Each dataset's datapool lives alone in its output: two datasets writing into one location would
    mix their tags, samples and exports."""
    names = list(specs)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            a, b = specs[first].output, specs[second].output
            if locations_overlap(a, b):
                raise ConfigError(
                    f"{source}: datasets.{first}.output ({a}) and datasets.{second}.output ({b}) overlap: each "
                    "dataset needs its own output location, or their datapools would mix"
                )


def _parse_dataset(name: str, body: Any, base_dir: Path, source: str) -> DatasetSpec:
    where = f"{source}: datasets.{name}"
    if not _NAME_RE.match(name):
        raise ConfigError(f"{where}: the name must start with a letter and use only letters, digits, - and _")
    if not isinstance(body, dict):
        raise ConfigError(f"{where}: expected a mapping with type, input and output")
    allowed = {"type", "input", "output", "embedding", "video", "images_per_shard", "seed", "sensor",
               "bypass_verify", "backfill_shards_per_run", "credentials", "images", "owners"}
    unknown = set(body) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    dtype = str(body.get("type", "")).upper()
    if dtype not in DATASET_TYPES:
        raise ConfigError(f"{where}.type: must be IMAGES or VIDEOS, got {body.get('type')!r}")
    for key in ("input", "output"):
        if not isinstance(body.get(key), str) or not body[key].strip():
            raise ConfigError(f"{where}.{key}: required, a folder path or s3:// gs:// az:// prefix")
    input_uri = _resolve_location(body["input"], base_dir)
    output_uri = _resolve_location(body["output"], base_dir)
    if locations_overlap(input_uri, output_uri):
        raise ConfigError(
            f"{where}: input ({input_uri}) and output ({output_uri}) overlap: the output must be neither the "
            "input nor inside it (its frames would be listed as new raw files), and not contain it"
        )
    embedding = _parse_embedding(body.get("embedding") or {}, f"{where}.embedding")
    video = _parse_video(body.get("video") or {}, f"{where}.video")
    images_per_shard = body.get("images_per_shard", 256)
    if not isinstance(images_per_shard, int) or isinstance(images_per_shard, bool) or images_per_shard < 1:
        raise ConfigError(f"{where}.images_per_shard: must be a positive integer")
    seed = body.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"{where}.seed: must be an integer")
    bypass_verify = body.get("bypass_verify", False)
    if not isinstance(bypass_verify, bool):
        raise ConfigError(f"{where}.bypass_verify: must be true or false")
    sensor = _parse_sensor(body.get("sensor") or {}, f"{where}.sensor")
    per_run = body.get("backfill_shards_per_run")
    if per_run is not None:
        per_run = _positive_int(body, "backfill_shards_per_run", 1, where)
    return DatasetSpec(
        name=name,
        type=dtype,
        input=input_uri,
        output=output_uri,
        embedding=embedding,
        video=video,
        images_per_shard=images_per_shard,
        seed=seed,
        bypass_verify=bypass_verify,
        sensor=sensor,
        backfill_shards_per_run=per_run,
        owners=_parse_owners(body.get("owners", []), f"{where}.owners"),
        credentials=_parse_credentials(
            body.get("credentials"), {"input": input_uri, "output": output_uri}, f"{where}.credentials"
        ),
        images=_parse_images(body.get("images"), f"{where}.images"),
    )


def _parse_owners(value: Any, where: str) -> tuple[str, ...]:
    owners = [value] if isinstance(value, str) else value
    if not isinstance(owners, list) or not all(
        isinstance(o, str) and (re.match(r"^team:[A-Za-z0-9_-]+$", o) or re.match(r"^[^@\s]+@[^@\s]+$", o))
        for o in owners
    ):
        raise ConfigError(f"{where}: a list of e-mail addresses or team:<name> entries, got {value!r}")
    return tuple(owners)


def _resolve_location(value: str, base_dir: Path) -> str:
    value = value.strip()
    if value.startswith(_URI_SCHEMES[1:]):
        return value
    if "://" in value and not value.startswith("file://"):
        raise ConfigError(f"unsupported location {value!r}: use a path, file://, s3://, gs:// or az://")
    path = Path(value.removeprefix("file://")).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    return str(path.resolve())


def _parse_embedding(body: Any, where: str) -> EmbeddingSpec:
    if not isinstance(body, dict):
        raise ConfigError(f"{where}: expected a mapping (model, pretrained, batch_size, device)")
    allowed = {"model", "pretrained", "batch_size", "device", "seed", "precision"}
    unknown = set(body) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    defaults = EmbeddingSpec()
    model = body.get("model", defaults.model)
    if not isinstance(model, str) or not model:
        raise ConfigError(f"{where}.model: must be an open_clip architecture name such as ViT-B-32")
    pretrained = body.get("pretrained", defaults.pretrained)
    if pretrained is None or (isinstance(pretrained, str) and pretrained.strip().lower() in ("none", "")):
        pretrained = None
    elif not isinstance(pretrained, str):
        raise ConfigError(f"{where}.pretrained: must be an open_clip pretrained tag, a checkpoint path or none")
    batch_size = body.get("batch_size", defaults.batch_size)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or not 1 <= batch_size <= 4096:
        raise ConfigError(f"{where}.batch_size: must be an integer between 1 and 4096")
    device = str(body.get("device", defaults.device))
    if device != "auto" and not re.match(r"^(cpu|cuda(:\d+)?|mps)$", device):
        raise ConfigError(f"{where}.device: must be auto, cpu, cuda, cuda:N or mps, got {device!r}")
    seed = body.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"{where}.seed: must be an integer")
    precision = str(body.get("precision", defaults.precision)).strip().lower()
    if precision not in EMBEDDING_PRECISIONS:
        raise ConfigError(f"{where}.precision: must be one of {', '.join(EMBEDDING_PRECISIONS)}, got {precision!r}")
    return EmbeddingSpec(
        model=model, pretrained=pretrained, batch_size=batch_size, device=device, seed=seed, precision=precision
    )


def _parse_video(body: Any, where: str) -> VideoSpec:
    allowed = ["fps", "scene_threshold", "skip_duplicates"]
    if not isinstance(body, dict):
        raise ConfigError(f"{where}: expected a mapping ({', '.join(allowed)})")
    unknown = set(body) - set(allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {allowed}")
    fps = body.get("fps")
    if fps is not None and (not isinstance(fps, (int, float)) or isinstance(fps, bool) or fps <= 0):
        raise ConfigError(f"{where}.fps: must be a positive number, or omitted to keep every frame")
    skip = body.get("skip_duplicates", False)
    if not isinstance(skip, bool):
        raise ConfigError(f"{where}.skip_duplicates: must be true or false, got {skip!r}")
    scene = body.get("scene_threshold")
    if scene is not None and (
        not isinstance(scene, (int, float)) or isinstance(scene, bool) or not 0 < scene < 1
    ):
        raise ConfigError(
            f"{where}.scene_threshold: must be a number between 0 and 1 (e.g. 0.1), or omitted to keep "
            f"every frame, got {scene!r}"
        )
    return VideoSpec(
        fps=float(fps) if fps is not None else None,
        skip_duplicates=skip,
        scene_threshold=float(scene) if scene is not None else None,
    )


def _parse_images(body: Any, where: str) -> ImageSpec:
    if body is None:
        return ImageSpec()
    if not isinstance(body, dict):
        raise ConfigError(f"{where}: expected a mapping (max_decoded_megabytes)")
    unknown = set(body) - {"max_decoded_megabytes"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(map(str, unknown))}; allowed: ['max_decoded_megabytes']")
    return ImageSpec(
        max_decoded_megabytes=_positive_int(body, "max_decoded_megabytes", DEFAULT_MAX_DECODED_MEGABYTES, where)
    )


def _positive_int(body: dict[str, Any], key: str, default: int, where: str) -> int:
    value = body.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{where}.{key}: must be a positive integer, got {value!r}")
    return value


def _parse_sensor(body: Any, where: str) -> SensorSpec:
    if not isinstance(body, dict):
        raise ConfigError(f"{where}: expected a mapping (enabled, minimum_interval_seconds, worker_config, ...)")
    allowed = {
        "enabled", "minimum_interval_seconds", "files_per_run", "max_runs_per_tick", "max_objects_per_tick",
        "worker_config", "selection_config",
    }
    unknown = set(body) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    enabled = body.get("enabled", False)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{where}.enabled: must be true or false, got {enabled!r}")
    run_config = {
        "worker_config": body.get("worker_config", DEFAULT_SENSOR_RUN_CONFIG["worker_config"]),
        "selection_config": body.get("selection_config", DEFAULT_SENSOR_RUN_CONFIG["selection_config"]),
    }
    try:
        parsed = parse_run_config(run_config)
    except ConfigError as exc:
        raise ConfigError(f"{where}.{exc}") from None
    if parsed.process_all:
        raise ConfigError(
            f"{where}.worker_config.datasource.process_all: a sensor runs on new files only; remove it and "
            "use a backfill (README: Sensors, backfills and the Dagster UI) to process everything again"
        )
    return SensorSpec(
        enabled=enabled,
        minimum_interval_seconds=_positive_int(body, "minimum_interval_seconds", 60, where),
        files_per_run=_positive_int(body, "files_per_run", 100, where),
        max_runs_per_tick=_positive_int(body, "max_runs_per_tick", 10, where),
        max_objects_per_tick=_positive_int(body, "max_objects_per_tick", 20_000, where),
        run_config=run_config,
    )


_ENV_PREFIX_RE = re.compile(r"^[A-Z][A-Z0-9_]{0,39}$")


def _parse_credentials(body: Any, locations: dict[str, str], where: str) -> CredentialsSpec:
    """`credentials: {input: RAW, output: OUT}`: names of environment-variable prefixes, never secrets."""
    if body is None:
        return CredentialsSpec()
    if not isinstance(body, dict):
        raise ConfigError(f"{where}: expected a mapping such as {{input: RAW, output: OUT}} (env-variable prefixes)")
    unknown = set(body) - {"input", "output"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(map(str, unknown))}; allowed: ['input', 'output']")
    prefixes: dict[str, str | None] = {}
    for side in ("input", "output"):
        value = body.get(side)
        if value is None:
            prefixes[side] = None
            continue
        if not isinstance(value, str) or not _ENV_PREFIX_RE.match(value) or value.endswith("_"):
            raise ConfigError(
                f"{where}.{side}: must be an environment-variable prefix of capital letters, digits and _ "
                "(e.g. RAW for RAW_AWS_ACCESS_KEY_ID), not a secret or a path"
            )
        if not locations[side].startswith(_URI_SCHEMES[1:]):
            raise ConfigError(
                f"{where}.{side}: the {side} is a local folder; credentials apply to s3://, gs:// and az:// only"
            )
        prefixes[side] = value
    return CredentialsSpec(input=prefixes["input"], output=prefixes["output"])
