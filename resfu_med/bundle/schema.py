"""Offline validation of a bundle's ``configs/metadata.json``.

MONAI's published metadata schema is a download (``monai.bundle verify_metadata`` fetches the URL in the file's
``schema`` field). This package ships :file:`metadata_schema.json`, written from the MONAI Bundle Specification
(``docs/source/mb_specification.rst``): the mandatory keys and the tensor format specifiers of
``network_data_format``. It validates with ``jsonschema`` and no network, and MONAI's verifier accepts it in place of
the download: ``python -m monai.bundle verify_metadata --meta_file configs/metadata.json --filepath <schema file>``
(an existing ``--filepath`` is used as is).
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from resfu_med.errors import InputError

__all__ = ["SCHEMA_URL", "schema_path", "load_schema", "validate_metadata"]

# The schema URL MONAI bundles of the Model Zoo point at; our file encodes the same specification offline.
SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json"


def schema_path() -> Path:
    """Path of the shipped metadata schema (package data of :mod:`resfu_med.bundle`)."""
    return Path(str(resources.files("resfu_med.bundle").joinpath("metadata_schema.json")))


@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    """The shipped metadata schema as a dict (checked to be a valid draft-07 schema)."""
    schema = json.loads(schema_path().read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    return schema


def _field(path: Any) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def validate_metadata(metadata: dict[str, Any] | str | os.PathLike, source: str | None = None) -> dict[str, Any]:
    """Validate bundle metadata against the shipped schema.

    Args:
        metadata: the metadata dict, or the path of a ``metadata.json``.
        source: name of the file to cite in errors (defaults to the path, or ``metadata.json``).

    Returns:
        The validated metadata dict.

    Raises:
        InputError: the file is missing or not JSON, or a field is missing or invalid; the message names the file and
            the field (``network_data_format.inputs.image.num_channels``), listing every problem found.
    """
    if not isinstance(metadata, dict):
        path = Path(metadata)
        source = source or str(path)
        if not path.is_file():
            raise InputError(f"{source}: bundle metadata file not found")
        try:
            metadata = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InputError(f"{source}: not valid JSON ({err})") from None
        if not isinstance(metadata, dict):
            raise InputError(f"{source}: expected a JSON object at the top level, got {type(metadata).__name__}")
    source = source or "metadata.json"
    validator = jsonschema.Draft7Validator(load_schema())
    errors = sorted(validator.iter_errors(metadata), key=lambda e: (list(e.absolute_path), e.message))
    if errors:
        problems = []
        for err in errors:
            if err.validator == "required":
                # jsonschema reports a missing key at its parent; name the key itself.
                missing = err.message.split("'")[1] if "'" in err.message else err.message
                field = _field([*err.absolute_path, missing])
                problems.append(f"field '{field}' is required but missing")
            else:
                problems.append(f"field '{_field(err.absolute_path)}' is invalid: {err.message}")
        raise InputError(f"{source}: invalid bundle metadata: " + "; ".join(problems))
    return metadata
