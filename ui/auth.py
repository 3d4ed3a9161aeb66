"""Who is asking: scrypt password hashes checked at Gradio's login, or a user name from a
trusted proxy's header; with neither configured, the one local user."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from rag.settings import ChatSettings, user_name_problem

LOCAL_USER = "local"
# scrypt's cost: 2**14 rounds with r=8 take about 50 ms and 16 MiB here, OWASP's minimum
# recommendation for interactive logins.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1
_SCHEME = "scrypt"


def hash_password(password: str) -> str:
    """A self-describing hash: `scrypt$N$r$p$salt$key` (base64), for the profile's users."""
    if not password:
        raise ValueError("the password is empty")
    salt = secrets.token_bytes(16)
    key = _scrypt(password, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P)
    return "$".join(
        (_SCHEME, str(_SCRYPT_N), str(_SCRYPT_R), str(_SCRYPT_P), _b64(salt), _b64(key))
    )


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, key = stored.split("$")
        if scheme != _SCHEME:
            return False
        expected = base64.b64decode(key)
        actual = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p))
    except ValueError:
        # A malformed hash in the profile lets nobody in; it never raises at the login form.
        return False
    return hmac.compare_digest(actual, expected)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=32, maxmem=64 * 1024 * 1024
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# Every principal's key starts with its kind and a colon ("chat:alice"; the API's are "api:…")
# and the shared collection's ("shared") has none, so no user name can name another principal's
# documents, cached answers or conversation scope.
CHAT_OWNER_PREFIX = "chat:"


@dataclass(frozen=True)
class Identity:
    name: str
    admin: bool

    @property
    def owner(self) -> str:
        """The key of what this user owns: uploaded documents and cached answers."""
        return CHAT_OWNER_PREFIX + self.name


def login_required(chat: ChatSettings) -> bool:
    return bool(chat.users) or chat.trusted_header is not None


def identify(chat: ChatSettings, username: str | None) -> Identity:
    """The identity behind a request's authenticated user name (None: nobody logged in)."""
    if not login_required(chat):
        return Identity(LOCAL_USER, admin=True)
    if not username:
        # Gradio only runs events for authenticated sessions once auth is on; this is a guard
        # against a misconfigured mount, not a path users take.
        raise PermissionError("not logged in")
    if user_name_problem(username) is not None:
        raise PermissionError("this user name cannot be used")
    user = chat.users.get(username)
    admin = user.admin if user is not None else username in chat.header_admins
    return Identity(username, admin)


def password_check(chat: ChatSettings) -> Callable[[str, str], bool] | None:
    """Gradio's `auth` callable for the configured users, or None when nobody is configured."""
    if not chat.users or chat.trusted_header is not None:
        return None
    users = dict(chat.users)
    # A name that is not configured still costs one scrypt, so timing does not tell which
    # user names exist.
    decoy = hash_password(secrets.token_urlsafe(16))

    def check(username: str, password: str) -> bool:
        user = users.get(username)
        ok = verify_password(password, user.password_hash if user else decoy)
        return ok and user is not None

    return check


def trusted_header_user(chat: ChatSettings) -> Callable[[Any], str | None] | None:
    """Gradio's `auth_dependency`: the user named by the proxy's header, believed only when
    the request comes from one of the trusted proxies."""
    header = chat.trusted_header
    if header is None:
        return None
    proxies = frozenset(chat.trusted_proxies)

    def user_from_header(request: Any) -> str | None:
        client = getattr(request, "client", None)
        if client is None or client.host not in proxies:
            return None
        name = request.headers.get(header, "").strip()
        # A reserved or malformed name logs nobody in (Gradio then shows its login error).
        return name if name and user_name_problem(name) is None else None

    return user_from_header


def login_of(chat: ChatSettings) -> Callable[[MutableMapping[str, Any]], str | None]:
    """What names the login behind an ASGI request, for binding Gradio sessions to it: the
    trusted header's user, or Gradio's login cookies. None without a login (single-user mode)
    or when the request carries none (Gradio then refuses it itself)."""
    from starlette.requests import Request

    header_user = trusted_header_user(chat)

    def login(scope: MutableMapping[str, Any]) -> str | None:
        if not login_required(chat):
            return None
        request = Request(scope)
        if header_user is not None:
            return header_user(request)
        # Gradio names its cookie after the app (`access-token-<id>`, `-unsecure-` over http).
        tokens = sorted(v for k, v in request.cookies.items() if k.startswith("access-token"))
        return "\x00".join(tokens) or None

    return login
