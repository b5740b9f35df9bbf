"""datasets.yaml: one typed schema for the per-dataset settings.

Each dataset is a DatasetSpec (pydantic, unknown keys refused, values not coerced); relative local paths
are resolved against the file's folder. Errors name the field: `datasets.videos.embedding.batch_size: ...`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationInfo, field_validator, model_validator

from datapool_pipeline.config import RunConfig, SelectionConfig, WorkerConfig
from datapool_pipeline.errors import ConfigError
from datapool_pipeline.media.image import DEFAULT_MAX_DECODED_MEGABYTES
from datapool_pipeline.schema import StrictModel, validate

DEFAULT_DATASETS_FILE = "datasets.yaml"
DATASETS_ENV = "DATAPOOL_DATASETS"
DATASET_TYPES = ("IMAGES", "VIDEOS")
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")
_OBJECT_STORE_SCHEMES = ("s3://", "gs://", "az://")
_ENV_PREFIX_RE = r"^[A-Z][A-Z0-9_]{0,38}[A-Z0-9]$|^[A-Z]$"
INPUT_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"
INPUT_SEPARATOR = ":"
"""Between an input's name and a key in the sample ids of named inputs: `archive:2024/a.mp4`."""
_OWNER_RE = re.compile(r"^team:[A-Za-z0-9_-]+$|^[^@\s]+@[^@\s]+$")
EMBEDDING_PRECISIONS = ("auto", "int8", "fp32", "bf16")  # the values of the former key embedding.precision


class EmbeddingSpec(StrictModel):
    """Which open_clip model embeds a dataset's samples. Fixed per dataset: changing it re-embeds."""

    model: str = Field(default="ViT-B-32", min_length=1, description="An open_clip architecture, e.g. ViT-B-32.")
    pretrained: str | None = Field(
        default="laion2b_s34b_b79k",
        description="An open_clip pretrained tag (model hub), a local checkpoint path, or none for seeded "
        "random weights (tests, offline demo).",
    )
    batch_size: int = Field(default=32, ge=1, le=4096, description="Images per forward pass.")
    device: str = Field(
        default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$", description="auto, cpu, cuda, cuda:N or mps."
    )
    seed: int = Field(default=0, description="Seed of the random weights when pretrained is none.")
    runtime: Literal["auto", "fp32", "int8", "bf16", "onnx", "onnx-int8", "openvino"] = Field(
        default="auto",
        description="What runs the model on CPU: auto (the fastest runtime this machine offers whose embeddings "
        "keep cosine >= 0.99 to fp32, measured at load time), fp32, int8, bf16, onnx, onnx-int8 (extra [onnx]) or "
        "openvino (extra [openvino]). Not part of the fingerprint: every runtime is checked against fp32 at load "
        "time and refused below cosine 0.99, so cached embeddings stay comparable. GPUs ignore it.",
    )

    @model_validator(mode="before")
    @classmethod
    def _former_precision_key(cls, data: Any) -> Any:
        """`precision` (auto, int8, fp32, bf16) is the former name of `runtime` and still read."""
        if not isinstance(data, dict) or "precision" not in data:
            return data
        data = dict(data)
        value = data.pop("precision")
        value = value.strip().lower() if isinstance(value, str) else value
        if value not in EMBEDDING_PRECISIONS:
            raise ValueError(f"precision: must be one of {', '.join(EMBEDDING_PRECISIONS)} (the former name of "
                             f"embedding.runtime), got {value!r}")
        if "runtime" in data and data["runtime"] != value:
            raise ValueError(f"precision: is the former name of runtime; give runtime only (precision {value!r}, "
                             f"runtime {data['runtime']!r})")
        data["runtime"] = value
        return data

    @field_validator("pretrained", mode="before")
    @classmethod
    def _none_means_random(cls, value: Any) -> Any:
        return None if isinstance(value, str) and value.strip().lower() in ("none", "") else value

    @field_validator("runtime", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @property
    def fingerprint(self) -> str:
        """Identifies the embedding space; cached embeddings are only reused under the same one."""
        pretrained = self.pretrained or f"none-seed{self.seed}"
        if self.pretrained and os.path.sep in self.pretrained:
            stat = Path(self.pretrained).stat() if Path(self.pretrained).exists() else None
            pretrained = f"{Path(self.pretrained).name}-{stat.st_size if stat else 0}"
        return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{self.model}--{pretrained}")


class VideoSpec(StrictModel):
    """Frame extraction settings for VIDEOS datasets (defaults keep every frame)."""

    fps: float | None = Field(default=None, gt=0, description="Frames per second to keep; omitted: every frame.")
    skip_duplicates: bool = Field(
        default=False, description="Drop frames that barely differ from the previous kept one (ffmpeg mpdecimate)."
    )
    scene_threshold: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="Keep only frames whose scene-change score (0..1) exceeds this (ffmpeg select=gt(scene,T)).",
    )

    def frame_options(self) -> dict[str, object]:
        """Keyword arguments for FrameStream / extract_frames_png (same options = same frame indices)."""
        return {"fps": self.fps, "skip_duplicates": self.skip_duplicates, "scene_threshold": self.scene_threshold}


class FilterSpec(StrictModel):
    """Degenerate-frame filter: drop black, blurred or noise (static) samples before selection, by the
    built-in metadata the embedding pass computes on the model-size frame (see docs/configuration.md)."""

    drop_black: bool = Field(default=False, description="Drop samples whose brightness (mean luma 0..255) is at "
                             "most black_max_brightness.")
    black_max_brightness: float = Field(default=10.0, ge=0, le=255,
                                        description="drop_black: the largest brightness that counts as black.")
    drop_blurred: bool = Field(default=False, description="Drop samples whose sharpness (variance of the "
                               "Laplacian of luma, on the model-size frame) is at most blurred_max_sharpness.")
    blurred_max_sharpness: float = Field(
        default=20.0,
        ge=0,
        description="drop_blurred: the largest sharpness that counts as blurred (or flat). Measured at 224x224: "
        "sharp test images about 350, the same blurred (gaussian sigma 8 at 720p) under 10.",
    )

    drop_noise: bool = Field(default=False, description="Drop noise/static frames (encoder glitches, snow): "
                             "samples whose pixel_correlation (autocorrelation of luma between neighbouring "
                             "pixels) is at most noise_max_correlation.")
    noise_max_correlation: float = Field(
        default=0.3,
        ge=-1,
        le=1,
        description="drop_noise: the largest pixel_correlation that counts as noise. Measured: uniform noise "
        "-0.06 to 0.16 (sources of 64 px and more), ffmpeg test sources and drawn scenes 0.88-1.0, photos "
        "0.75-1.0, fine textures (grass, gravel, brick) 0.61-0.70 at full size, 0.24-0.37 when only ~100 px.",
    )

    @property
    def enabled(self) -> bool:
        return self.drop_black or self.drop_blurred or self.drop_noise


METADATA_TABLE_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl",
                          ".ndjson": "jsonl"}


class MetadataTableSpec(StrictModel):
    """The dataset's user metadata / scores / predictions table (read by METADATA, SCORES and PREDICTIONS
    strategy inputs at selection time; see docs/configuration.md)."""

    file: str = Field(
        min_length=1,
        description="Key of the table in the input datasource (for a dataset with named inputs, "
        "<name>:<key>): Parquet (.parquet, .pq), CSV (.csv) or JSON lines (.jsonl, .ndjson). Column raw_key "
        "(the raw file's key, as in sample ids), for videos optionally frame_index; every other column is a key.",
    )

    @field_validator("file")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if not any(value.lower().endswith(ext) for ext in METADATA_TABLE_FORMATS):
            raise ValueError(
                f"name a .parquet, .pq, .csv, .jsonl or .ndjson file (the extension gives the format), not {value}"
            )
        return value

    @property
    def format(self) -> str:
        return next(f for ext, f in METADATA_TABLE_FORMATS.items() if self.file.lower().endswith(ext))


class ImageSpec(StrictModel):
    """Image decoding limits for IMAGES datasets."""

    max_decoded_megabytes: int = Field(
        default=DEFAULT_MAX_DECODED_MEGABYTES,
        ge=1,
        description="Peak memory (MB, 2^20 bytes) one image's decode may take, computed from its header before "
        "decoding; an image above it is skipped with the reason.",
    )


DEFAULT_VIDEOS_PER_SHARD = 32
DEFAULT_MAX_SHARD_MEGABYTES = 4096
DEFAULT_FULL_LISTING_EVERY_TICKS = 60
"""About an hour at the default 60 s sensor interval."""
DEFAULT_SENSOR_WORKER_CONFIG = WorkerConfig(use_datapool=True)
DEFAULT_SENSOR_SELECTION_CONFIG = SelectionConfig(proportion_samples=0.1)


class SensorSpec(StrictModel):
    """The dataset's sensor: watches the input and requests a run per batch of new files."""

    enabled: bool = Field(
        default=False,
        description="Running by default when the code location loads; false: stopped until turned on in the UI.",
    )
    minimum_interval_seconds: int = Field(default=60, ge=1, description="Seconds between two ticks.")
    files_per_run: int = Field(
        default=100, ge=1, description="New raw files per requested run (whole shards, so a few more may come)."
    )
    max_runs_per_tick: int = Field(default=10, ge=1, description="Runs one tick may request.")
    max_objects_per_tick: int = Field(
        default=20_000, ge=1, description="Objects listed per tick; the cursor resumes the listing on the next tick."
    )
    full_listing_every_ticks: int = Field(
        default=DEFAULT_FULL_LISTING_EVERY_TICKS,
        ge=1,
        description="Incremental ticks between two full passes over the input. A tick lists only the keys after "
        "the greatest key seen; a full pass (max_objects_per_tick per tick) finds keys written out of order and "
        "overwritten files.",
    )
    shard_wait_seconds: int = Field(
        default=0,
        ge=0,
        description="Seconds the sensor may hold back new files that do not fill a shard (videos_per_shard, "
        "images_per_shard), waiting for more, kept in its cursor; 0: every tick's new files are requested at once. "
        "For a bucket that receives a file or two per tick, e.g. 900 keeps the partitions near one per 15 minutes "
        "instead of one per tick.",
    )
    worker_config: WorkerConfig = Field(
        default=DEFAULT_SENSOR_WORKER_CONFIG, description="The requested runs' worker_config (use_datapool)."
    )
    selection_config: SelectionConfig = Field(
        default=DEFAULT_SENSOR_SELECTION_CONFIG, description="The requested runs' selection_config."
    )

    @field_validator("worker_config")
    @classmethod
    def _new_files_only(cls, value: WorkerConfig) -> WorkerConfig:
        if value.datasource.process_all:
            raise ValueError(
                "datasource.process_all: a sensor runs on new files only; remove it and use a backfill "
                "(docs/operations.md: Backfills) to process everything again"
            )
        return value

    @property
    def run_config(self) -> dict[str, Any]:
        """The run config of the runs this sensor requests."""
        return RunConfig(worker_config=self.worker_config, selection_config=self.selection_config).to_dict()


class CredentialsSpec(StrictModel):
    """Which environment variables hold the object-store credentials of a dataset's input and output:
    a prefix such as RAW reads RAW_AWS_ACCESS_KEY_ID, RAW_AZURE_STORAGE_SAS_TOKEN... (docs/object-stores.md);
    none reads the standard, unprefixed variables."""

    input: str | None = Field(
        default=None,
        pattern=_ENV_PREFIX_RE,
        json_schema_extra={"hide_input": True},
        description="An environment-variable prefix of capital letters, digits and _ such as RAW (for "
        "RAW_AWS_ACCESS_KEY_ID), not a secret or a path: where the input's credentials are.",
    )
    output: str | None = Field(
        default=None,
        pattern=_ENV_PREFIX_RE,
        json_schema_extra={"hide_input": True},
        description="An environment-variable prefix of capital letters, digits and _ such as OUT, not a secret or "
        "a path: where the output's credentials are.",
    )

    def env_prefix(self, side: str) -> str:
        """'RAW_' for a side configured with prefix RAW, '' for the standard variables."""
        prefix = self.input if side == "input" else self.output
        return f"{prefix}_" if prefix else ""


class InputSpec(StrictModel):
    """One datasource a dataset reads raw files from."""

    uri: str = Field(min_length=1, description="A folder path or an s3:// gs:// az:// prefix with the raw files.")
    name: str | None = Field(
        default=None,
        pattern=INPUT_NAME_RE,
        json_schema_extra={"hint": "letters, digits, - and _, starting with a letter or a digit"},
        description="Qualifies the sample ids of this input's files as <name>:<key>, so equal keys in two inputs "
        "never collide; at most one input of a dataset has no name (its keys stay as they are, which is how an "
        "existing dataset keeps its datapool when an input is added).",
    )
    credentials: str | None = Field(
        default=None,
        pattern=_ENV_PREFIX_RE,
        json_schema_extra={"hide_input": True},
        description="An environment-variable prefix of capital letters, digits and _ for this input's "
        "credentials; default: credentials.input.",
    )

    @field_validator("uri", mode="before")
    @classmethod
    def _resolve(cls, value: Any, info: ValidationInfo) -> Any:
        return _resolve_in_context(value, info)


class DatasetSpec(StrictModel):
    """One dataset: where its raw files are, where its datapool lives, and how it is processed."""

    name: str = Field(description="The dataset's name: its key under datasets:.", json_schema_extra={"derived": True})
    type: Literal["IMAGES", "VIDEOS"] = Field(description="IMAGES or VIDEOS; fixed once the datapool exists.")
    inputs: tuple[InputSpec, ...] = Field(
        validation_alias="input",
        min_length=1,
        strict=False,
        description="Where the raw files are: a folder path or an s3:// gs:// az:// prefix, or a list of them "
        "(entries {uri, name, credentials}) to grow one datapool from several datasources.",
    )
    output: str = Field(
        min_length=1, description="A folder path or an s3:// gs:// az:// prefix for the datapool, apart from input."
    )
    embedding: EmbeddingSpec = Field(default=EmbeddingSpec(), description="The embedding model.")
    video: VideoSpec = Field(default=VideoSpec(), description="Frame extraction of VIDEOS datasets.")
    filters: FilterSpec = Field(
        default=FilterSpec(), description="Degenerate-frame filter (drop_black, drop_blurred, drop_noise) before "
        "selection."
    )
    images_per_shard: int = Field(default=256, ge=1, description="Images per partition of IMAGES datasets.")
    videos_per_shard: int = Field(
        default=DEFAULT_VIDEOS_PER_SHARD,
        ge=1,
        description="Videos per partition (shard) of VIDEOS datasets, at most: 10^6 videos make ~3*10^4 partitions "
        "at 32, under Dagster's 10^5. A run's new videos fill shards in key order and the last shard takes what "
        "is left, so 3 new videos make one shard of 3. Applies to newly found videos; shards registered before "
        "keep their videos.",
    )
    max_shard_megabytes: int = Field(
        default=DEFAULT_MAX_SHARD_MEGABYTES,
        ge=1,
        description="Total size (MB, 2^20 bytes) of a VIDEOS shard's files, at most (a stand-in for their duration, "
        "which is unknown before decoding): a shard closes at videos_per_shard or at this size, whichever comes "
        "first; a larger video is a shard of its own.",
    )
    seed: int = Field(default=0, description="Seed of the selection's tie-breaking and projections.")
    bypass_verify: bool = Field(
        default=False, description="Skip the run-start check that the input is readable and the output writable."
    )
    sensor: SensorSpec = Field(default=SensorSpec(), description="The sensor that starts runs on new files.")
    backfill_shards_per_run: int | None = Field(
        default=None, ge=1, description="Shards per run of an embeddings backfill; none: one run."
    )
    credentials: CredentialsSpec = Field(
        default=CredentialsSpec(),
        description="Environment-variable prefixes of the input's and the output's object-store credentials.",
    )
    owners: tuple[str, ...] = Field(
        default=(),
        strict=False,
        description="Owners of the dataset's assets in the Dagster UI: e-mail addresses or team:<name>.",
    )
    images: ImageSpec = Field(default=ImageSpec(), description="Image decoding limits.")
    metadata: MetadataTableSpec | None = Field(
        default=None,
        description="A user metadata / scores / predictions table in the input datasource, keyed by raw file key "
        "(and frame_index for videos): e.g. {file: meta/labels.parquet}.",
    )

    @model_validator(mode="before")
    @classmethod
    def _empty_sections_default(cls, value: Any) -> Any:
        """`images:` with nothing under it (YAML null) means the defaults, as if the key were absent."""
        if isinstance(value, dict):
            sections = ("embedding", "video", "sensor", "credentials", "images", "owners")
            return {k: v for k, v in value.items() if not (k in sections and v is None)}
        return value

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError("the name must start with a letter and use only letters, digits, - and _")
        return value

    @field_validator("type", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("inputs", mode="before")
    @classmethod
    def _input_list(cls, value: Any) -> Any:
        """`input: PATH` is one unnamed input; a list holds paths and {uri, name, credentials} mappings."""
        entries = [value] if isinstance(value, str) else value
        if isinstance(entries, list):
            return tuple({"uri": e} if isinstance(e, str) else e for e in entries)
        return entries

    @field_validator("inputs")
    @classmethod
    def _inputs_distinct(cls, inputs: tuple[InputSpec, ...]) -> tuple[InputSpec, ...]:
        unnamed = [i for i, entry in enumerate(inputs) if entry.name is None]
        if len(unnamed) > 1:
            raise ValueError(
                f"[{unnamed[1]}].name: required: at most one input keeps plain keys, give the others a name "
                "(their sample ids become <name>:<key>)"
            )
        names = [entry.name for entry in inputs if entry.name is not None]
        if len(set(names)) != len(names):
            raise ValueError("two inputs share a name: each name qualifies its input's sample ids, keep them apart")
        for i, first in enumerate(inputs):
            for second in inputs[i + 1 :]:
                if locations_overlap(first.uri, second.uri):
                    raise ValueError(
                        f"inputs {first.uri} and {second.uri} overlap: a file would be read twice as two samples"
                    )
        return inputs

    @field_validator("output", mode="before")
    @classmethod
    def _resolve(cls, value: Any, info: ValidationInfo) -> Any:
        return _resolve_in_context(value, info)

    @field_validator("owners", mode="before")
    @classmethod
    def _owner_list(cls, value: Any) -> Any:
        owners = [value] if isinstance(value, str) else value
        if not isinstance(owners, (list, tuple)) or not all(isinstance(o, str) and _OWNER_RE.match(o) for o in owners):
            raise ValueError(f"a list of e-mail addresses or team:<name> entries, got {value!r}")
        return tuple(owners)

    @model_validator(mode="after")
    def _locations_apart(self) -> DatasetSpec:
        for entry in self.inputs:
            if locations_overlap(entry.uri, self.output):
                raise ValueError(
                    f"input ({entry.uri}) and output ({self.output}) overlap: the output must be neither the input "
                    "nor inside it (its frames would be listed as new raw files), and not contain it"
                )
            if entry.credentials and not entry.uri.startswith(_OBJECT_STORE_SCHEMES):
                raise ValueError(
                    f"input: {entry.uri} is a local folder; credentials apply to s3://, gs:// and az:// only"
                )
        local_inputs = all(not e.uri.startswith(_OBJECT_STORE_SCHEMES) for e in self.inputs)
        for side, local in (("input", local_inputs), ("output", not self.output.startswith(_OBJECT_STORE_SCHEMES))):
            if getattr(self.credentials, side) and local:
                raise ValueError(
                    f"credentials.{side}: the {side} is a local folder; credentials apply to s3://, gs:// and az:// "
                    "only"
                )
        return self

    @property
    def input(self) -> str:
        """The location of a dataset's only input (code that handles several inputs uses `inputs`)."""
        if len(self.inputs) != 1:
            raise ValueError(f"dataset {self.name} has {len(self.inputs)} inputs; use DatasetSpec.inputs")
        return self.inputs[0].uri

    def input_of(self, key: str) -> InputSpec:
        """The input a sample id (raw key) comes from: `<name>:<key>` names one, other keys are the
        unnamed input's (or the only input's)."""
        name, sep, _ = key.partition(INPUT_SEPARATOR)
        named = next((e for e in self.inputs if sep and e.name == name), None)
        return named or next((e for e in self.inputs if e.name is None), self.inputs[0])

    def input_env_prefix(self, entry: InputSpec) -> str:
        """'RAW_' for an input whose credentials are behind prefix RAW ('' = the standard variables)."""
        prefix = entry.credentials or self.credentials.input
        return f"{prefix}_" if prefix else ""

    @property
    def asset_prefix(self) -> str:
        return self.name.replace("-", "_")


class DatasetsFile(StrictModel):
    """The whole datasets.yaml: `datasets:` maps each dataset's name to its settings."""

    datasets: dict[str, DatasetSpec] = Field(min_length=1, description="Dataset name -> settings.")

    @field_validator("datasets", mode="before")
    @classmethod
    def _names_from_keys(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        named = {}
        for name, body in value.items():
            if isinstance(body, dict) and "name" in body:
                raise ValueError(f"{name}.name: unknown field; the dataset's name is its key under datasets:")
            named[str(name)] = {**body, "name": str(name)} if isinstance(body, dict) else body
        return named

    @model_validator(mode="after")
    def _datasets_apart(self) -> DatasetsFile:
        prefixes: dict[str, str] = {}
        for spec in self.datasets.values():
            if spec.asset_prefix in prefixes:
                raise ValueError(
                    f"datasets '{prefixes[spec.asset_prefix]}' and '{spec.name}' map to the same Dagster asset "
                    "prefix; rename one"
                )
            prefixes[spec.asset_prefix] = spec.name
        # Each dataset's datapool lives alone in its output: two datasets writing into one location would
        # mix their tags, samples and exports.
        specs = list(self.datasets.values())
        for i, first in enumerate(specs):
            for second in specs[i + 1 :]:
                if locations_overlap(first.output, second.output):
                    raise ValueError(
                        f"datasets.{first.name}.output ({first.output}) and datasets.{second.name}.output "
                        f"({second.output}) overlap: each dataset needs its own output location, or their "
                        "datapools would mix"
                    )
        return self


def datasets_file(path: str | os.PathLike[str] | None = None) -> Path:
    return Path(path or os.environ.get(DATASETS_ENV) or DEFAULT_DATASETS_FILE)


def load_datasets(path: str | os.PathLike[str] | None = None) -> dict[str, DatasetSpec]:
    """Read and validate datasets.yaml; relative local paths are resolved against its folder."""
    file = datasets_file(path)
    if not file.exists():
        raise ConfigError(f"datasets file {file} not found: pass --datasets FILE or set {DATASETS_ENV}")
    try:
        raw = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file} is not valid YAML: {exc}") from None
    return parse_datasets(raw, base_dir=file.resolve().parent, source=str(file))


def parse_datasets(raw: Any, base_dir: Path, source: str = "datasets.yaml") -> dict[str, DatasetSpec]:
    if not isinstance(raw, dict) or "datasets" not in raw:
        raise ConfigError(f"{source}: expected a top-level 'datasets:' mapping of dataset name -> settings")
    return validate(DatasetsFile, raw, context={"base_dir": str(base_dir)}, source=source).datasets


def locations_overlap(a: str, b: str) -> bool:
    """True when one location is the other or lies inside it (compared by whole path segments)."""
    a, b = a.rstrip("/") + "/", b.rstrip("/") + "/"
    return a.startswith(b) or b.startswith(a)


def _resolve_in_context(value: Any, info: ValidationInfo) -> Any:
    """A location as written in datasets.yaml, resolved against the file's folder (validation context)."""
    base_dir = (info.context or {}).get("base_dir")
    return resolve_location(value, Path(base_dir or ".")) if isinstance(value, str) and value.strip() else value


def resolve_location(value: str, base_dir: Path) -> str:
    """An object-store URI as is; a local path (or file:// URI) as an absolute path, relative to base_dir."""
    value = value.strip()
    if value.startswith(_OBJECT_STORE_SCHEMES):
        return value
    if "://" in value and not value.startswith("file://"):
        raise ValueError(f"unsupported location {value!r}: use a path, file://, s3://, gs:// or az://")
    path = Path(value.removeprefix("file://")).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    return str(path.resolve())

