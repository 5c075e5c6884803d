"""Settings of the transfer kit and of a transfer (re-exported: they are defined in :mod:`studio.schema`).

They sit in the schema module because the transfer job's request embeds them; this module keeps
the import path the plain functions and tests use.
"""

from __future__ import annotations

from studio.schema import FewShotFormat, KitOptions, TransferOptions

__all__ = ["FewShotFormat", "KitOptions", "TransferOptions"]
