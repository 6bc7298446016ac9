"""URL helpers shared by transports and result backends: below both, so neither imports
the other for them.

One masking rule for every broker and backend URL that ends up in a message, a repr or a
log line: the password and secret query values become ``**``.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["MASK", "mask_url"]

#: Query parameters whose value is a secret, masked like the password.
_SECRET_QUERY_KEYS = frozenset({"password", "passwd", "pass", "secret", "token"})

#: What a secret is replaced with.
MASK = "**"


def mask_url(url: str) -> str:
    """``url`` with its password (and secret query parameters) replaced by ``**``.

    ``redis://:s3cret@host:6379/0`` → ``redis://:**@host:6379/0``;
    ``amqp://user:pw@host//`` → ``amqp://user:**@host//``. A URL without a password is
    returned unchanged, and so is a string that is not a URL.
    """
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced IPv6 bracket: show nothing of it
        return "<unparsable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        # rpartition: a password may itself contain "@" if the user forgot to quote it.
        userinfo, _, hostport = netloc.rpartition("@")
        if ":" in userinfo:
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:{MASK}@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(key.lower() in _SECRET_QUERY_KEYS for key, _ in pairs):
            query = urlencode(
                [(k, MASK if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in pairs],
                safe="*/:",
            )
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
