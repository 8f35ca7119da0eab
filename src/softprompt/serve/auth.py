"""Who may do what: an API key for the API, an admin key for changing the tasks.

Keys are compared in constant time (``hmac.compare_digest``), so response times leak nothing about
how much of a guess was right. Without ``api_key`` the API is open; without ``admin_key`` nobody can
add or remove tasks over HTTP. The admin key also opens the API.

Example:
    >>> keys = Keys(api_key="user-key", admin_key="admin-key")
    >>> keys.check("Bearer admin-key", admin=True)
    >>> keys.check("Bearer user-key", admin=True)
    Traceback (most recent call last):
    ...
    softprompt.serve.errors.APIError: this needs the admin key; the key given is an API key
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from softprompt.serve.errors import forbidden, unauthorized


def _same(given: str, expected: str | None) -> bool:
    return expected is not None and hmac.compare_digest(given.encode(), expected.encode())


@dataclass(frozen=True)
class Keys:
    api_key: str | None = None
    admin_key: str | None = None

    def check(self, authorization: str | None, admin: bool = False) -> None:
        """Raise the 401 / 403 :class:`~softprompt.serve.errors.APIError` that ``authorization`` earns."""
        if admin and self.admin_key is None:
            raise forbidden("adding and removing tasks is off: start the server with --admin-key")
        if not admin and self.api_key is None:
            return
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise unauthorized("no API key: send the header 'Authorization: Bearer <key>'")
        is_admin = _same(given, self.admin_key)
        if admin and not is_admin:
            if _same(given, self.api_key):
                raise forbidden("this needs the admin key; the key given is an API key")
            raise unauthorized("the key given is not valid")
        if not admin and not (is_admin or _same(given, self.api_key)):
            raise unauthorized("the key given is not valid")
