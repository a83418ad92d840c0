"""Options that several `dbos-pydantic-ai` commands take alike."""

from __future__ import annotations

from typing import Annotated

import typer

__all__ = ["DatabaseUrl", "TrustPickle"]

DatabaseUrl = Annotated[
    str,
    typer.Option(
        envvar="DBOS_SYSTEM_DATABASE_URL",
        help="The workers' system database: 'sqlite:///file.sqlite' or 'postgresql://...'.",
        show_envvar=True,
    ),
]
"""The workers' system database, required (from the flag or `DBOS_SYSTEM_DATABASE_URL`)."""

TrustPickle = Annotated[
    bool,
    typer.Option(
        "--trust-pickle",
        help="Also read and show values stored as pickle (unpickling runs code: only for a database you trust).",
    ),
]
"""Readers never unpickle unless told to (see docs/serialization.md); default False."""
