"""The operator console's sign-in: a token of INGRESS_TOKENS exchanged for a signed session
cookie, that cookie checked against INGRESS_TOKENS on every request, and CSRF tokens.

The cookie holds no token: it holds an HMAC of the token under CONSOLE_SECRET (so a cookie
that leaks names no token, and one made under another secret matches nothing), the session's
CSRF token, and is signed with a timestamp (itsdangerous, the signer Starlette's own sessions
use) so it expires after CONSOLE_SESSION_S. Each request looks the HMAC up among the tokens
this process was started with: a token taken out of INGRESS_TOKENS (and the ingress restarted
with the new value) stops every session it opened at once.

Every state-changing form carries the session's CSRF token (a hidden field), compared in
constant time; the cookie is also SameSite=Strict, so a cross-site form post carries no
session. The sign-in form itself has a CSRF token too, from a short-lived signed cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

from worker.contract.settings import ConfigError, Settings, TokenGrant

COOKIE = "llmr_console"
PRE_COOKIE = "llmr_console_signin"  # the sign-in form's CSRF token, before there is a session
PATH = "/console/"
PRE_COOKIE_S = 3600
# A secret shorter than this is refused at start-up: it would be guessed from one cookie.
MIN_SECRET = 16


class SignIn(Exception):
    """No valid session: the browser is sent to the sign-in page."""


class Forbidden(Exception):
    """A signed-in viewer whose role may not see or do this (a source token on an operator page)."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


class BadCsrf(Exception):
    """A state-changing form without the session's CSRF token."""


@dataclass(frozen=True)
class Viewer:
    """Who is signed in: a token's grant and the session's CSRF token."""

    grant: TokenGrant
    csrf: str

    @property
    def operator(self) -> bool:
        return self.grant.role == "operator"

    @property
    def source(self) -> str | None:
        """The one source a source token sees; None for an operator (who sees all)."""
        return None if self.operator else self.grant.source

    def may_see(self, source: str | None) -> bool:
        return self.operator or (source is not None and source == self.grant.source)

    def must_operate(self, what: str) -> None:
        if not self.operator:
            raise Forbidden(what)


def check_secret(settings: Settings) -> None:
    """A CONSOLE_SECRET too short to sign with refuses the start (a missing one: `llm-router api`)."""
    secret = settings.console_secret
    if secret is not None and len(secret.get_secret_value()) < MIN_SECRET:
        raise ConfigError(
            f"CONSOLE_SECRET is under {MIN_SECRET} characters: use a long random value, the same on every "
            "ingress process (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
        )


class Sessions:
    """Signs and reads the console's cookies for one ingress process."""

    def __init__(self, settings: Settings, secret: str) -> None:
        self.settings = settings
        self.key = secret.encode()
        self.serializer = URLSafeTimedSerializer(secret, salt="llm-router-console")
        # the HMAC of each token (what a cookie holds) -> its grant
        self.by_digest = {self._digest(t): g for t, g in settings.grants().items()}

    def _digest(self, token: str) -> str:
        return hmac.new(self.key, token.encode(), hashlib.sha256).hexdigest()

    def _cookie(self, response: Response, name: str, value: str, max_age: int) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path=PATH,
            httponly=True,
            samesite="strict",
            secure=not self.settings.console_insecure_http,
        )

    def sign_in(self, token: str, response: Response) -> bool:
        """Set the session cookie if `token` is one of INGRESS_TOKENS (compared in constant time)."""
        digest = self._digest(token)
        known = any(hmac.compare_digest(digest, d) for d in self.by_digest)
        if known:
            value = self.serializer.dumps({"t": digest, "c": secrets.token_urlsafe(24)})
            self._cookie(response, COOKIE, value, self.settings.console_session_s)
            response.delete_cookie(PRE_COOKIE, path=PATH)
        return known

    def sign_out(self, response: Response) -> None:
        response.delete_cookie(COOKIE, path=PATH)

    def viewer(self, request: Request) -> Viewer:
        """The signed-in viewer, or SignIn (no cookie, a bad or expired signature, a removed token)."""
        raw = request.cookies.get(COOKIE)
        if not raw:
            raise SignIn()
        try:
            data = self.serializer.loads(raw, max_age=self.settings.console_session_s)
        except BadSignature:
            raise SignIn() from None
        grant = self.by_digest.get(data.get("t", "")) if isinstance(data, dict) else None
        if grant is None:
            raise SignIn()
        return Viewer(grant, str(data.get("c", "")))

    def pre_csrf(self, request: Request) -> str:
        """The sign-in form's CSRF token: the one its cookie holds, else a new one (keep_pre_csrf)."""
        try:
            return str(self.serializer.loads(request.cookies.get(PRE_COOKIE, ""), max_age=PRE_COOKIE_S))
        except BadSignature:
            return secrets.token_urlsafe(24)

    def keep_pre_csrf(self, response: Response, token: str) -> None:
        self._cookie(response, PRE_COOKIE, self.serializer.dumps(token), PRE_COOKIE_S)

    def check_pre_csrf(self, request: Request, sent: str) -> None:
        try:
            token = str(self.serializer.loads(request.cookies.get(PRE_COOKIE, ""), max_age=PRE_COOKIE_S))
        except BadSignature:
            raise BadCsrf() from None
        check_csrf(token, sent)


def check_csrf(expected: str, sent: str | None) -> None:
    if not expected or not sent or not hmac.compare_digest(expected.encode(), sent.encode()):
        raise BadCsrf()
