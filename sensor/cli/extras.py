"""Optional dependencies: which pip extra a command needs, and a one-line error when it is missing.

The core install (``pip install dlp-sensor``) runs ``scan``, ``proxy``, ``icap``, ``takedowns``,
``report`` and ``demo``. Kafka scale-out and Envoy's ext_proc pull in large dependency trees
(faust-streaming, aiokafka; grpcio, xds-protos) that a sidecar image should not carry, so they are
extras, imported only by the code paths that use them. A command that needs one checks it first,
so the operator reads "install dlp-sensor[kafka]" instead of a traceback from deep inside a import.
"""
from __future__ import annotations

import importlib

import click

EXTRAS: dict[str, tuple[str, ...]] = {
    # extra -> the top-level modules it provides (import names, not distribution names)
    "kafka": ("aiokafka", "faust"),
    "extproc": ("grpc", "envoy.service.ext_proc.v3.external_processor_pb2"),
}


class MissingExtra(click.ClickException):
    """A command needs an optional dependency that is not installed: exit 2, one line."""

    exit_code = 2


def require(extra: str, what: str) -> None:
    """Raise :class:`MissingExtra` naming the extra if any module of ``extra`` cannot be imported.

    ``what`` says who needs it ("dlp-sensor worker", "kafka.bootstrap"), so the message tells the
    operator both why and how to fix it.
    """
    for module in EXTRAS[extra]:
        try:
            importlib.import_module(module)
        except ImportError as e:
            missing = getattr(e, "name", None) or module
            raise MissingExtra(f"{what} needs the '{extra}' extra: pip install 'dlp-sensor[{extra}]' "
                               f"(module {missing} is not installed)") from None
