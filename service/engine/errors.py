"""Errors of the embedded engine, each with a message a user can act on."""

from __future__ import annotations


class EngineError(RuntimeError):
    """Base class: something about the embedded engine went wrong."""


class NotEnoughDiskError(EngineError):
    """The data directory's disk has too little free space for the next step."""


class PrepareError(EngineError):
    """Creating the engine virtualenv, assembling or converting the model failed."""


class NotPreparedError(EngineError):
    """`calib engine start` was asked for before `calib engine prepare`."""


class PortInUseError(EngineError):
    """Something already listens on the requested host:port."""


class EngineCrashedError(EngineError):
    """The engine process exited (or never got healthy); the message holds its log tail."""
