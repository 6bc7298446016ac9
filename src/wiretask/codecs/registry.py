"""The codec registry: lookup by name, alias or content type; accept policy; size limits.

A :class:`Registry` is an ordinary instance. Nothing is registered at import time and there is
no process-wide registry to mutate: :func:`default_registry` builds a fresh one on every call,
and :meth:`Registry.copy` derives variants (another accept list, another size limit).

Receiving a message goes: :meth:`Registry.check_accept` (refuse untrusted content *before*
touching the body), then :meth:`Registry.decompress` (bounded), then :meth:`Registry.loads`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any, Final

import attrs

from wiretask.codecs.compressors import Compressor, available_compressors
from wiretask.codecs.nesting import exceeds, too_deep
from wiretask.codecs.serializers import (
    JSON,
    JSON_CONTENT_TYPE,
    MSGPACK,
    MSGPACK_CONTENT_TYPE,
    PICKLE,
    RAW,
    RAW_CONTENT_TYPE,
    TEXT_CONTENT_TYPE,
    Serializer,
)
from wiretask.errors import (
    ContentDisallowed,
    DecodeError,
    EncodeError,
    ImproperlyConfigured,
    MessageTooLarge,
    UnknownCodec,
    WiretaskError,
)

__all__ = [
    "DEFAULT_ACCEPT",
    "DEFAULT_MAX_DECOMPRESSED_SIZE",
    "TRUSTED_CONTENT",
    "Encoded",
    "Registry",
    "default_registry",
    "enable_pickle",
]

#: The content types a default registry decodes: JSON and msgpack. Celery's own default
#: ``accept_content`` is ``['json']``; msgpack is added because it is just as safe to decode
#: (no code runs) and wiretask writes it when asked.
DEFAULT_ACCEPT: Final = frozenset({JSON_CONTENT_TYPE, MSGPACK_CONTENT_TYPE})

#: The default cap on a decompressed body: 64 MiB. Kombu has no cap at all. RabbitMQ's
#: default ``max_message_size`` is 128 MiB for the *compressed* message and Redis caps a
#: string at 512 MiB, so no broker bounds the decompressed size; 64 MiB is far above any
#: sensible task payload (Celery's docs advise sending references, not data) while keeping a
#: worker's memory per message predictable. Raise it per registry when needed.
DEFAULT_MAX_DECOMPRESSED_SIZE: Final = 64 * 1024 * 1024

#: Content types decoded whatever the accept policy says. Kombu always trusts these two, so a
#: Celery worker with ``accept_content=['json']`` still reads raw bytes; wiretask keeps the rule
#: because neither type is *parsed*: the body comes back as bytes (or text, when its
#: ``content_encoding`` names a charset), so there is nothing an attacker can exploit that a
#: size cap does not already cover. Pass ``trusted=frozenset()`` to drop the rule.
TRUSTED_CONTENT: Final = frozenset({RAW_CONTENT_TYPE, TEXT_CONTENT_TYPE})

#: Kombu's rule: a missing or empty content type means raw bytes.
_MISSING_CONTENT_TYPE: Final = RAW_CONTENT_TYPE
#: Kombu's content encodings that mean "do not text-decode" (kombu.serialization.SKIP_DECODE).
_BINARY_ENCODINGS: Final = frozenset({"binary", "ascii-8bit"})


@attrs.frozen
class Encoded:
    """A serialized body and the two message properties that describe it.

    Attributes:
        data: The body bytes (before any compression).
        content_type: The MIME type for the ``content_type`` property.
        content_encoding: The value for the ``content_encoding`` property.
    """

    data: bytes
    content_type: str
    content_encoding: str


def normalize_content_type(content_type: str) -> str:
    """Lower-case a MIME type and drop its parameters (``; charset=...``).

    Kombu compares content types as exact strings; MIME types are case-insensitive, and a
    charset parameter does not change which decoder applies, so wiretask is lenient here.
    """
    return content_type.split(";", 1)[0].strip().lower()


def _received_content_type(content_type: str | bytes | None) -> str:
    if isinstance(content_type, bytes):  # AMQP drivers may hand over bytes
        content_type = content_type.decode("latin-1")
    if not content_type:
        return _MISSING_CONTENT_TYPE
    return normalize_content_type(content_type) or _MISSING_CONTENT_TYPE


class Registry:
    """Serializers and compressors in use, the accept policy and the decompression limit.

    Build one with :func:`default_registry`, or directly for full control::

        registry = Registry(serializers=[JSON], compressors=[ZLIB], accept=["json"])

    Args:
        serializers: The serializers to register.
        compressors: The compressors to register.
        accept: Content types (or serializer names) :meth:`loads` decodes. Names must be
            registered; MIME types are taken as given, as Kombu does.
        trusted: Content types decoded even when not accepted (see :data:`TRUSTED_CONTENT`).
        max_decompressed_size: The default cap for :meth:`decompress`, in bytes.
        compress_threshold: Bodies shorter than this many bytes are sent uncompressed by
            :meth:`maybe_compress`; ``None`` compresses every body when compression is asked.

    Raises:
        ImproperlyConfigured: For a negative size or threshold.
        UnknownCodec: When ``accept`` names an unknown serializer.
    """

    def __init__(
        self,
        *,
        serializers: Iterable[Serializer] = (),
        compressors: Iterable[Compressor] = (),
        accept: Iterable[str] = (),
        trusted: Iterable[str] = TRUSTED_CONTENT,
        max_decompressed_size: int = DEFAULT_MAX_DECOMPRESSED_SIZE,
        compress_threshold: int | None = None,
    ) -> None:
        if max_decompressed_size < 0:
            raise ImproperlyConfigured(
                "max_decompressed_size must not be negative", setting="max_decompressed_size"
            )
        if compress_threshold is not None and compress_threshold < 0:
            raise ImproperlyConfigured(
                "compress_threshold must not be negative", setting="compress_threshold"
            )
        #: Changes whenever a codec is registered (callers caching lookups compare it).
        self.version = 0
        self._serializers: dict[str, Serializer] = {}
        self._serializer_names: dict[str, str] = {}
        self._compressors: dict[str, Compressor] = {}
        self._compressor_names: dict[str, str] = {}
        for serializer in serializers:
            self.register_serializer(serializer)
        for compressor in compressors:
            self.register_compressor(compressor)
        self.max_decompressed_size = max_decompressed_size
        self.compress_threshold = compress_threshold
        self._trusted = frozenset(normalize_content_type(t) for t in trusted)
        self._accept = self.normalize_accept(accept)

    # -- configuration ---------------------------------------------------------------------

    @property
    def accept(self) -> frozenset[str]:
        """The accepted content types, as MIME types."""
        return self._accept

    @property
    def trusted(self) -> frozenset[str]:
        """Content types decoded even when they are not in :attr:`accept`."""
        return self._trusted

    def __repr__(self) -> str:
        return (
            f"<Registry serializers={sorted(self.serializer_names())} "
            f"compressors={sorted(self.compressor_names())} accept={sorted(self._accept)} "
            f"max_decompressed_size={self.max_decompressed_size}>"
        )

    def normalize_accept(self, accept: Iterable[str]) -> frozenset[str]:
        """Map serializer names to MIME types, as Kombu's ``prepare_accept_content`` does.

        Raises:
            UnknownCodec: For a name (no ``/``) that no registered serializer has.
        """
        if isinstance(accept, str):  # a lone "json" would otherwise become {"j","s","o","n"}
            accept = (accept,)
        types: set[str] = set()
        for entry in accept:
            if "/" in entry:
                types.add(normalize_content_type(entry))
            else:
                types.add(self.serializer(entry).content_type)
        return frozenset(types)

    def copy(self, **changes: Any) -> Registry:
        """A new registry with the same codecs, and the given settings changed.

        Keyword names are those of the constructor: ``accept``, ``trusted``,
        ``max_decompressed_size``, ``compress_threshold``, ``serializers`` and
        ``compressors`` (the last two replace the codec lists).
        """
        settings: dict[str, Any] = {
            "serializers": tuple(self._serializers.values()),
            "compressors": tuple(self._compressors.values()),
            "accept": self._accept,
            "trusted": self._trusted,
            "max_decompressed_size": self.max_decompressed_size,
            "compress_threshold": self.compress_threshold,
        }
        unknown = set(changes) - set(settings)
        if unknown:
            raise TypeError(f"Registry.copy() got unknown settings: {', '.join(sorted(unknown))}")
        settings.update(changes)
        return Registry(**settings)

    # -- serializers -----------------------------------------------------------------------

    def register_serializer(self, serializer: Serializer) -> None:
        """Add a serializer (or replace the one with the same content type).

        Registering does not accept it: add its name or type to the accept policy as well
        (:meth:`copy` with ``accept=``) to decode it.
        """
        content_type = normalize_content_type(serializer.content_type)
        self.version += 1
        self._serializers[content_type] = serializer
        for name in (serializer.name, *serializer.aliases):
            self._serializer_names[name.lower()] = content_type

    def serializer(self, name_or_content_type: str) -> Serializer:
        """Look a serializer up by name, alias or content type.

        Raises:
            UnknownCodec: When none matches (``kind="serializer"``).
        """
        key = normalize_content_type(name_or_content_type)
        found = self._serializers.get(key)
        if found is None:
            content_type = self._serializer_names.get(key)
            if content_type is not None:
                found = self._serializers[content_type]
        if found is None:
            raise UnknownCodec("serializer", name_or_content_type, self.serializer_names())
        return found

    def serializer_names(self) -> tuple[str, ...]:
        """The names of the registered serializers."""
        return tuple(serializer.name for serializer in self._serializers.values())

    def dumps(
        self, value: Any, serializer: str, *, field: str = "body", max_depth: int | None = None
    ) -> Encoded:
        """Serialize ``value`` with the named serializer.

        Args:
            value: What to serialize.
            serializer: A serializer name, alias or content type.
            field: The field named in errors.
            max_depth: Refuse a value that nests lists, tuples and dicts deeper than this
                (``wiretask.codecs.nesting``; task messages use ``MAX_DEPTH``).

        Raises:
            UnknownCodec: For an unknown serializer name.
            EncodeError: When the value cannot be serialized, or nests deeper than
                ``max_depth``; ``field`` names it (default ``"body"``) and ``content_type``
                says with what.
        """
        codec = self.serializer(serializer)
        try:
            data = codec.dumps(value) if max_depth is None else _dumps_within(
                codec, value, max_depth
            )
        except WiretaskError:
            raise
        except Exception as exc:  # a serializer's failure, whatever its type, is an encode error
            raise EncodeError(
                field, f"{codec.name}: {exc}", content_type=codec.content_type
            ) from exc
        encoding = codec.content_encoding
        if codec.passthrough and isinstance(value, str):
            encoding = "utf-8"  # Kombu's raw_encode: text is sent as UTF-8 and labelled so
        return Encoded(data, codec.content_type, encoding)

    def check_accept(
        self,
        content_type: str | None,
        *,
        accept: Collection[str] | None = None,
        field: str = "content_type",
    ) -> None:
        """Refuse a content type the accept policy does not allow.

        Call this before decompressing or decoding anything. A missing or empty content type
        counts as ``application/data`` (Kombu's rule), which is trusted by default.

        Args:
            content_type: The message's ``content_type`` property.
            accept: Names or MIME types to accept instead of :attr:`accept`.
            field: The field named in the error.

        Raises:
            ContentDisallowed: When the type is neither accepted nor trusted.
            UnknownCodec: When ``accept`` names an unknown serializer.
        """
        received = _received_content_type(content_type)
        if received in self._trusted:
            return
        allowed = self._accept if accept is None else self.normalize_accept(accept)
        if received not in allowed:
            raise ContentDisallowed(received, field=field)

    def loads(
        self,
        data: bytes,
        content_type: str | None,
        content_encoding: str | None = None,
        *,
        accept: Collection[str] | None = None,
        field: str = "body",
        max_depth: int | None = None,
    ) -> Any:
        """Decode a (decompressed) body, after checking the accept policy.

        The serializer is chosen by ``content_type``. A content type that is accepted but has
        no registered serializer, and the raw/text types, follow Kombu's rule: the body is
        returned as bytes when ``content_encoding`` is ``binary`` (or ``ascii-8bit``),
        otherwise as text decoded with that charset (UTF-8 when missing).

        Unlike Kombu, which returns an empty body unchanged whatever its type, an empty body
        is a :class:`~wiretask.errors.DecodeError` for structured formats (JSON, msgpack, ...):
        it is not a valid document in any of them.

        With ``max_depth``, a document nesting lists and dicts deeper than that is a
        :class:`~wiretask.errors.DecodeError` too (``wiretask.codecs.nesting``; task
        messages use ``MAX_DEPTH``).

        Raises:
            ContentDisallowed: When the content type is refused (nothing is decoded).
            DecodeError: When the body cannot be decoded; ``field`` names it.
            UnknownCodec: When ``accept`` names an unknown serializer.
        """
        self.check_accept(content_type, accept=accept)
        if not isinstance(data, bytes):
            if not isinstance(data, bytearray | memoryview):
                raise DecodeError(field, f"expected bytes, got {type(data).__name__}")
            data = bytes(data)
        received = _received_content_type(content_type)
        codec = self._serializers.get(received)
        if codec is None or codec.passthrough:
            return _decode_charset(data, content_encoding, field)
        if not data:
            raise DecodeError(field, f"empty {codec.name} body")
        try:
            if max_depth is None:
                return codec.loads(data)
            return _loads_within(codec, data, max_depth)
        except WiretaskError:
            raise
        except Exception as exc:  # anything a decoder raises on bad input is a decode error
            raise DecodeError(field, f"invalid {codec.name} data: {exc}") from exc

    # -- compressors -----------------------------------------------------------------------

    def register_compressor(self, compressor: Compressor) -> None:
        """Add a compressor (or replace the one with the same header value)."""
        content_type = normalize_content_type(compressor.content_type)
        self.version += 1
        self._compressors[content_type] = compressor
        for name in (compressor.name, *compressor.aliases):
            self._compressor_names[name.lower()] = content_type

    def _find_compressor(self, name: str) -> Compressor | None:
        key = normalize_content_type(name)
        found = self._compressors.get(key)
        if found is None:
            content_type = self._compressor_names.get(key)
            if content_type is not None:
                found = self._compressors[content_type]
        return found

    def compressor(self, name_alias_or_content_type: str) -> Compressor:
        """Look a compressor up by name, alias or header value (case-insensitive).

        Raises:
            UnknownCodec: When none matches (``kind="compressor"``).
        """
        found = self._find_compressor(name_alias_or_content_type)
        if found is None:
            raise UnknownCodec("compressor", name_alias_or_content_type, self.compressor_names())
        return found

    def compressor_names(self) -> tuple[str, ...]:
        """The names of the registered compressors."""
        return tuple(compressor.name for compressor in self._compressors.values())

    def compress(self, data: bytes, compression: str) -> tuple[bytes, str]:
        """Compress a serialized body.

        Returns:
            The compressed bytes and the value for the ``compression`` header: always the
            canonical MIME type, even when an alias was asked for (as Kombu writes it).

        Raises:
            UnknownCodec: For an unknown compression name.
            EncodeError: When the compressor fails (field ``"compression"``).
        """
        codec = self.compressor(compression)
        try:
            compressed = codec.compress(data)
        except WiretaskError:
            raise
        except Exception as exc:  # a compressor's failure is an encode error, whatever its type
            raise EncodeError("compression", f"{codec.name}: {exc}") from exc
        return compressed, codec.content_type

    def maybe_compress(
        self, data: bytes, compression: str | None, threshold: int | None = None
    ) -> tuple[bytes, str | None]:
        """Compress only when it is asked for and the body is big enough to be worth it.

        Small bodies usually grow when compressed (every format adds a header) and cost CPU on
        both ends, so a threshold of a few hundred bytes is a sensible setting. Kombu has no
        such option; a peer reads either form, because the ``compression`` header is simply
        left out of uncompressed messages.

        Args:
            data: The serialized body.
            compression: A compressor name/alias/type, or ``None`` for no compression.
            threshold: Bodies shorter than this are left alone; ``None`` uses
                :attr:`compress_threshold` (which, when ``None`` too, compresses everything).

        Returns:
            ``(data, None)`` when not compressed, else ``(compressed, header value)``.
        """
        if compression is None:
            return data, None
        if threshold is None:
            threshold = self.compress_threshold
        if threshold is not None and len(data) < threshold:
            self.compressor(compression)  # an unknown name is an error whatever the size
            return data, None
        return self.compress(data, compression)

    def decompress(self, data: bytes, compression: str, *, max_size: int | None = None) -> bytes:
        """Decompress a received body, refusing output larger than ``max_size``.

        Args:
            data: The compressed body.
            compression: The ``compression`` header: a MIME value or any alias.
            max_size: The cap in bytes; ``None`` uses :attr:`max_decompressed_size`.

        Raises:
            MessageTooLarge: When the output would pass the cap (raised before allocating
                past it; field ``"body"``).
            DecodeError: When the header names no known compressor or the data is corrupt
                (field ``"compression"``).
        """
        limit = self.max_decompressed_size if max_size is None else max_size
        codec = self._find_compressor(compression)
        if codec is None:
            known = ", ".join(sorted(self._compressors))
            raise DecodeError(
                "compression", f"unknown compression {compression!r} (known: {known})"
            )
        if not isinstance(data, bytes):
            data = bytes(data)
        try:
            result = codec.decompress(data, limit)
        except WiretaskError:
            raise
        except Exception as exc:  # a custom decompressor's failure is still bad input
            raise DecodeError("compression", f"corrupt {codec.name} data: {exc}") from exc
        if len(result) > limit:  # a custom decompressor that does not honour the limit
            raise MessageTooLarge("body", limit, len(result))
        return result


    # -- both steps, in the right order ----------------------------------------------------

    def encode(
        self,
        value: Any,
        serializer: str,
        compression: str | None = None,
        *,
        threshold: int | None = None,
        field: str = "body",
        max_depth: int | None = None,
    ) -> tuple[Encoded, str | None]:
        """Serialize (refusing nesting past ``max_depth``, as :meth:`dumps`), then
        compress (see :meth:`maybe_compress` for ``threshold``).

        Returns:
            The body (``data`` compressed when the header is not ``None``; ``content_type``
            and ``content_encoding`` describe the *uncompressed* payload, as on the wire) and
            the ``compression`` header value, or ``None``.
        """
        encoded = self.dumps(value, serializer, field=field, max_depth=max_depth)
        data, header = self.maybe_compress(encoded.data, compression, threshold)
        return attrs.evolve(encoded, data=data), header

    def decode(
        self,
        data: bytes,
        content_type: str | None,
        content_encoding: str | None = None,
        compression: str | None = None,
        *,
        accept: Collection[str] | None = None,
        max_size: int | None = None,
        field: str = "body",
        max_depth: int | None = None,
    ) -> Any:
        """Check the accept policy, decompress (bounded), then deserialize.

        The order is the point: refused content is never decompressed, so a compression bomb
        labelled with a refused content type costs nothing. (Kombu decompresses eagerly when
        the message is built, before any accept check.)

        Raises:
            ContentDisallowed: When the content type is refused.
            MessageTooLarge: When the decompressed body would pass ``max_size``.
            DecodeError: For an unknown or corrupt compression, or an undecodable body.
        """
        self.check_accept(content_type, accept=accept)
        if compression:
            data = self.decompress(data, compression, max_size=max_size)
        return self.loads(data, content_type, content_encoding, accept=accept, field=field,
                          max_depth=max_depth)


def _loads_within(codec: Serializer, data: bytes, limit: int) -> Any:
    """``codec.loads``, refusing (``ValueError``) a document nested deeper than ``limit``."""
    if codec.loads_within is not None:
        return codec.loads_within(data, limit)
    value = codec.loads(data)  # no shortcut by length: a short pickle can hold a cycle
    if exceeds(value, limit):
        raise ValueError(too_deep(limit))
    return value


def _dumps_within(codec: Serializer, value: Any, limit: int) -> bytes:
    """``codec.dumps``, refusing (``ValueError``) a value nested deeper than ``limit``."""
    if codec.dumps_within is not None:
        return codec.dumps_within(value, limit)
    data = codec.dumps(value)
    if exceeds(value, limit):
        raise ValueError(too_deep(limit))
    return data


def _decode_charset(data: bytes, content_encoding: str | None, field: str) -> bytes | str:
    """Kombu's rule for bodies with no decoder: bytes if binary, else text in the charset."""
    encoding = (content_encoding or "utf-8").lower()
    if encoding in _BINARY_ENCODINGS:
        return data
    try:
        return data.decode(encoding)
    except LookupError as exc:
        raise DecodeError(field, f"unknown content encoding {content_encoding!r}") from exc
    except UnicodeDecodeError as exc:
        raise DecodeError(field, f"body is not valid {encoding}: {exc}") from exc
    except ValueError as exc:  # a name Python cannot even look up ("utf\x00-8")
        raise DecodeError(field, f"unknown content encoding {content_encoding!r}") from exc


def enable_pickle(registry: Registry, *, accept: bool = False) -> Registry:
    """Register the pickle serializer on ``registry`` (in place) and return it.

    Decoding pickle runs arbitrary code chosen by whoever can publish to your broker, so it
    is never registered or accepted by default. Registering lets you *send* pickle; pass
    ``accept=True`` to also decode it (or add ``"pickle"`` to an accept list yourself).
    """
    registry.register_serializer(PICKLE)
    if accept:
        registry._accept = registry.accept | {PICKLE.content_type}
    return registry


def default_registry(
    *,
    accept: Iterable[str] = DEFAULT_ACCEPT,
    max_decompressed_size: int = DEFAULT_MAX_DECOMPRESSED_SIZE,
    pickle: bool = False,
    compress_threshold: int | None = None,
) -> Registry:
    """A fresh registry with the built-in codecs.

    Serializers: json, msgpack and raw (plus pickle when ``pickle=True``). Compressors: zlib,
    bzip2, lzma, zstd, and brotli when the ``brotli`` package is installed.

    Args:
        accept: Names or MIME types to decode; default JSON and msgpack. ``"pickle"`` may be
            listed only when ``pickle=True``.
        max_decompressed_size: Cap on decompressed bodies, in bytes.
        pickle: Register the pickle serializer. It is still only decoded when ``accept``
            names it.
        compress_threshold: See :meth:`Registry.maybe_compress`.

    Raises:
        UnknownCodec: When ``accept`` names an unknown serializer.
    """
    serializers = [JSON, MSGPACK, RAW]
    if pickle:
        serializers.append(PICKLE)
    return Registry(
        serializers=serializers,
        compressors=available_compressors(),
        accept=accept,
        max_decompressed_size=max_decompressed_size,
        compress_threshold=compress_threshold,
    )
