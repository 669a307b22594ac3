"""The ``gitpack`` command: typer commands (:mod:`.app`) over :mod:`gitpack.api`, rendering in :mod:`.render`."""

from .app import app, main

__all__ = ["app", "main"]
