"""The launchpad's run config: Dagster Config classes derived from the one run-config schema
(datapool_pipeline.config), so the launchpad shows the same fields, types, defaults and descriptions
as `datapool run --config`, and `parsed()` applies the same validation."""

from __future__ import annotations

import enum
import types
import typing
from typing import Any

import dagster as dg
from pydantic import BaseModel, Field, create_model

from datapool_pipeline.config import RunConfig, parse_run_config


def dagster_config_class(model: type[BaseModel]) -> type[dg.Config]:
    """A dg.Config with the model's fields (nested models converted too, tuples as lists); Dagster turns
    Literal types into enums, so the launchpad refuses unknown values before a run starts."""
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        annotation = _dagster_annotation(info.annotation)
        default = info.default
        if isinstance(default, BaseModel):
            default = default.model_dump(mode="json")
        elif isinstance(default, tuple):
            default = [d.model_dump(mode="json") if isinstance(d, BaseModel) else d for d in default]
        kwargs: dict[str, Any] = {"description": info.description}
        fields[name] = (annotation, Field(**kwargs) if info.is_required() else Field(default=default, **kwargs))
    config = create_model(model.__name__, __base__=dg.Config, __doc__=model.__doc__, **fields)
    return typing.cast(type[dg.Config], config)


def _dagster_annotation(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return dagster_config_class(annotation)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is tuple:
        return list[_dagster_annotation(args[0])]  # type: ignore[misc]
    if origin in (typing.Union, types.UnionType):
        # Dagster resolves a bare Literal but not one inside Optional: give it an Enum of the same values.
        converted = tuple(_literal_enum(a) if typing.get_origin(a) is typing.Literal else _dagster_annotation(a)
                          for a in args)
        return typing.Union[converted]  # noqa: UP007 - built from a runtime tuple
    return annotation


def _literal_enum(literal: Any) -> type[enum.Enum]:
    values = typing.get_args(literal)
    return enum.Enum("_".join(str(v) for v in values), {str(v): v for v in values})  # type: ignore[return-value]


_RunConfigBase = dagster_config_class(RunConfig)


class DatapoolRunConfig(_RunConfigBase):  # type: ignore[valid-type,misc]
    """worker_config / selection_config: the same keys as `datapool run --config run.yaml`."""

    def parsed(self) -> RunConfig:
        return parse_run_config(self.model_dump(mode="json", exclude_none=True, warnings=False))


def op_run_config(raw_files_op: str, run_config: dict) -> dict:
    """Dagster run config that carries a worker_config / selection_config mapping to the job."""
    parse_run_config(run_config)  # raises ConfigError naming the field
    return {"ops": {raw_files_op: {"config": run_config}}}
