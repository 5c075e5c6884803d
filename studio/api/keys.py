"""API keys of the /v1 API: ``Authorization: Bearer <key>`` against STUDIO_API_KEYS / STUDIO_API_KEYS_FILE.

Keys are required whenever one is configured, and always when the UI has a login
(STUDIO_AUTH): a studio that asks people for a password must not serve its models
to anyone without one. Keys are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac

from studio.api.errors import unauthorized
from studio.settings import Settings


class KeyCheck:
    """Checks the ``Authorization`` header of a request against the configured keys."""

    def __init__(self, settings: Settings):
        self._keys = [k.encode() for k in settings.api_key_list()]
        self._login_required = bool(settings.auth)

    @property
    def required(self) -> bool:
        """Whether requests need a key at all."""
        return bool(self._keys) or self._login_required

    def check(self, authorization: str | None) -> None:
        """Raise a 401 :class:`~studio.api.errors.ApiError` unless the header carries a configured key."""
        if not self.required:
            return
        if not self._keys:
            raise unauthorized(
                "The studio has a login (STUDIO_AUTH) but no API keys: set STUDIO_API_KEYS (or STUDIO_API_KEYS_FILE) "
                "to use the /v1 API."
            )
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise unauthorized("Missing API key: send it as `Authorization: Bearer <key>`.")
        candidate = given.strip().encode()
        # Compare with every key (no early exit) so timing does not tell how close a guess was.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(candidate, key)
        if not matched:
            raise unauthorized("Incorrect API key provided.")
