"""The ``gitpack`` command: typer commands (:mod:`.app`, the stored-artifact ones in :mod:`.store_commands`) over
:mod:`gitpack.api`; lines reach the terminal through :mod:`.output`, rich rendering in :mod:`.render`."""

from .app import app, main

__all__ = ["app", "main"]
