"""Tool inputs described by a JSON Schema rather than a pydantic model (another framework's tools).

`schema_model(name, schema)` is a pydantic model the openreward SDK lists with `schema` as the
tool's input schema and validates input against before the tool runs: input the schema refuses is
an `input_validation` error the model sees, never a call into the framework's tool.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_validator

__all__ = ["SchemaArgs", "schema_model"]


class SchemaArgs(BaseModel):
    """Arguments checked against `SCHEMA` (JSON Schema), kept as given."""

    model_config = ConfigDict(extra="allow")
    SCHEMA: ClassVar[dict[str, Any]] = {"type": "object"}

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return dict(cls.SCHEMA)

    @model_validator(mode="before")
    @classmethod
    def _follows_schema(cls, data: Any) -> Any:
        from jsonschema.validators import validator_for

        error = next(iter(validator_for(cls.SCHEMA)(cls.SCHEMA).iter_errors(data)), None)
        if error is not None:
            where = ".".join(str(p) for p in error.absolute_path)
            value = repr(error.instance)
            cut = value if len(value) <= 40 else value[:37] + "..."
            message = error.message.replace(value, cut)[:200]
            raise ValueError(f"{where + ': ' if where else ''}{message}")
        return data


def schema_model(name: str, schema: dict[str, Any] | None) -> type[SchemaArgs]:
    """A SchemaArgs model for one tool (`{"type": "object"}` when it declares no schema)."""
    body = dict(schema) if isinstance(schema, dict) and schema else {"type": "object"}
    return type(f"{name}_args", (SchemaArgs,), {"SCHEMA": body})
