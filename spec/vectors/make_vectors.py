"""Regenerate wiretask's own golden vectors: ``python spec/vectors/make_vectors.py``.

Three kinds, all written next to this file (``wt-*.json``) or in ``invalid/``:

* **encoded** (``direction: both``): a TaskMessage written here by hand, encoded with
  ``wiretask.protocol.celery.encode``. The test suite checks that the frame decodes back to
  the message and that encoding the message gives the same frame, byte for byte.
* **hand-made frames** (``direction: decode``): shapes wiretask reads but never writes
  (protocol 1, the hybrid form, a compression alias, Celery's minimal accepted message).
  Both the frame and the expected message are written out by hand, so the decoder is checked
  against an independent statement of the meaning, not against itself.
* **invalid** frames with the error class and field that decoding must raise.

Re-running rewrites the files; with unchanged code the output is identical.
"""

from __future__ import annotations

import json
import sys
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from wiretask import __version__
from wiretask.codecs import default_registry
from wiretask.protocol import Signature, TaskMessage
from wiretask.protocol.celery import encode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vectorfile  # a sibling module, found through the path set above

HERE = Path(__file__).resolve().parent
SOURCE = {"wiretask": __version__}
ID = "6f1c4a8e-5b0d-4e0a-9c7e-2f3b1d9a7c11"
REPLY_TO = "c6f170b7-cfcc-39ed-b2e8-b48b7e4abddf"
ORIGIN = "gen4242@wiretask-vectors"

SERIALIZERS = {"json": "application/json", "msgpack": "application/x-msgpack"}
COMPRESSORS = {
    "none": None,
    "zlib": "application/x-gzip",
    "bz2": "application/x-bz2",
    "lzma": "application/x-lzma",
    "zstd": "application/zstd",
    "brotli": "application/x-brotli",
}


def base(**fields: Any) -> TaskMessage:
    """A message as a Celery 5.7 caller would send it: root_id, reprs, origin, reply_to."""
    defaults: dict[str, Any] = {
        "task": "proj.tasks.add",
        "id": ID,
        "root_id": ID,
        "args": (2, 3),
        "argsrepr": "(2, 3)",
        "kwargsrepr": "{}",
        "origin": ORIGIN,
        "reply_to": REPLY_TO,
        "priority": 0,
    }
    return TaskMessage(**{**defaults, **fields})


def encoded_cases() -> Iterator[tuple[str, str, TaskMessage]]:
    for ser_name, content_type in SERIALIZERS.items():
        for comp_name, compression in COMPRESSORS.items():
            yield (
                f"wt-{ser_name}-{comp_name}",
                f"{ser_name} body, compression {comp_name}; args with nested data.",
                base(
                    args=(42, "user@example.com", {"plan": "pro", "seats": 5, "tags": ["a"]}),
                    argsrepr="(42, 'user@example.com', {...})",
                    kwargs={"notify": True, "ratio": 0.25, "nothing": None},
                    kwargsrepr="{'notify': True, 'ratio': 0.25, 'nothing': None}",
                    content_type=content_type,
                    compression=compression,
                ),
            )
    eta = datetime(2030, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)
    yield (
        "wt-eta-expires",
        "eta and expires as aware datetimes (UTC and a +05:30 offset, kept as given), with "
        "the expiration TTL property and time limits [hard, soft].",
        base(
            eta=eta,
            expires=datetime(2030, 1, 1, 19, 0, tzinfo=timezone(timedelta(hours=5, minutes=30))),
            expiration="3600000",
            timelimit=(30, 20.5),
        ),
    )
    callback = Signature(task="proj.tasks.notify", args=("done",), options={"queue": "mail"})
    errback = Signature(task="proj.tasks.report", immutable=True, args=(1,))
    yield (
        "wt-link-link-error",
        "link and link_error: embed.callbacks and embed.errbacks as signature dicts.",
        base(callbacks=(callback,), errbacks=(errback,)),
    )
    yield (
        "wt-chain",
        "A chain: embed.chain in Celery's order, the next task last, each frozen with a task_id.",
        base(
            chain=(
                Signature(task="proj.tasks.add", args=(4,), options={"task_id": "c-3"}),
                Signature(task="proj.tasks.add", args=(3,), options={"task_id": "c-2"}),
            )
        ),
    )
    yield (
        "wt-chord",
        "A chord header task: embed.chord carries the body, group and group_index are set.",
        base(
            group="g-1",
            group_index=1,
            chord=Signature(
                task="proj.tasks.tsum",
                options={"task_id": "body-1", "group_id": "g-1", "reply_to": REPLY_TO},
            ),
        ),
    )
    yield (
        "wt-unicode",
        "Non-ASCII text in args, kwargs and a header (JSON written as UTF-8, not escaped).",
        base(
            args=("héllo wörld ☃ 😀",),
            argsrepr="('héllo wörld ☃ 😀',)",
            kwargs={"ключ": "值"},
            kwargsrepr="{'ключ': '值'}",
            shadow="añadir",
        ),
    )
    for ser_name, content_type in SERIALIZERS.items():
        yield (
            f"wt-bytes-{ser_name}",
            f"bytes arguments under {ser_name} (JSON: Kombu's bytes/base64 markers; "
            "msgpack: bin).",
            base(
                args=(b"utf8 bytes", b"\xff\xfe\x00"),
                argsrepr="(b'utf8 bytes', b'\\xff\\xfe\\x00')",
                content_type=content_type,
            ),
        )
    yield (
        "wt-custom-headers-properties",
        "Custom headers after the protocol headers, custom properties after the known ones, "
        "and every optional header set.",
        base(
            shadow="add-shadow",
            group="g-2",
            group_index=0,
            retries=3,
            parent_id="parent-1",
            root_id="root-1",
            ignore_result=True,
            replaced_task_nesting=1,
            stamped_headers=("tenant",),
            stamps={"tenant": "acme"},
            extra_headers={"x-trace": "abc123", "x-attempt": 2},
            correlation_id="corr-1",
            priority=9,
            delivery_mode=1,
            extra_properties={"app_id": "billing"},
        ),
    )


def hand_made() -> Iterator[dict[str, Any]]:
    """Frames wiretask only reads, each with the meaning stated independently."""
    minimal_body = b"[[2, 3], {}, null]"
    yield {
        "name": "wt-decode-minimal",
        "description": "The minimal message a Celery 5.7 worker runs: only task and id "
        "headers, a null embed, no properties.",
        "frame": vectorfile.frame_json(
            minimal_body, "application/json", "utf-8", {"task": "rapp.add", "id": ID}, {}
        ),
        "message": TaskMessage(task="rapp.add", id=ID, args=(2, 3)),
    }
    yield {
        "name": "wt-decode-compression-alias",
        "description": "A compression header holding the alias 'zlib' instead of the MIME "
        "value; Kombu and wiretask accept both, wiretask re-encodes with the MIME value.",
        "frame": vectorfile.frame_json(
            zlib.compress(minimal_body),
            "application/json",
            "utf-8",
            {"task": "rapp.add", "id": ID, "compression": "zlib"},
            {"correlation_id": ID, "reply_to": "", "delivery_mode": 2},
        ),
        "message": TaskMessage(
            task="rapp.add", id=ID, args=(2, 3), compression="application/x-gzip"
        ),
    }
    yield {
        "name": "wt-decode-naive-eta",
        "description": "A naive eta and expires (no offset) are UTC, as a Celery worker reads "
        "them; an empty-string eta would mean 'not set'.",
        "frame": vectorfile.frame_json(
            minimal_body,
            "application/json",
            "utf-8",
            {"task": "rapp.add", "id": ID, "eta": "2030-01-01T12:00:00",
             "expires": "2030-01-01T13:00:00Z"},
            {},
        ),
        "message": TaskMessage(
            task="rapp.add", id=ID, args=(2, 3),
            eta=datetime(2030, 1, 1, 12, tzinfo=UTC), expires=datetime(2030, 1, 1, 13, tzinfo=UTC),
        ),
    }
    legacy = {
        "task": "proj.tasks.add", "id": ID, "args": [1, 2], "kwargs": {"z": 3},
        "group": "g-old", "group_index": None, "retries": 1,
        "eta": "2030-01-01T12:00:00+00:00", "expires": None, "utc": True,
        "callbacks": [{"task": "proj.tasks.cb", "args": [], "kwargs": {}, "options": {},
                       "subtask_type": None, "immutable": False, "chord_size": None}],
        "errbacks": None, "timelimit": [10, 5], "taskset": "g-1", "chord": None,
    }
    yield {
        "name": "wt-decode-protocol1",
        "description": "Protocol 1: no task header, the body is a mapping. taskset wins over "
        "group (as in Celery's proto1_to_proto2); utc is not used; a null chord_size is kept "
        "as absent; message headers become extra headers.",
        "frame": vectorfile.frame_json(
            json.dumps(legacy).encode(), "application/json", "utf-8", {"x-trace": "t"},
            {"correlation_id": ID, "reply_to": REPLY_TO, "delivery_mode": 2, "priority": 0},
        ),
        "message": TaskMessage(
            task="proj.tasks.add", id=ID, args=(1, 2), kwargs={"z": 3}, group="g-1",
            retries=1, eta=datetime(2030, 1, 1, 12, tzinfo=UTC), timelimit=(10, 5),
            callbacks=(Signature(task="proj.tasks.cb"),), extra_headers={"x-trace": "t"},
            reply_to=REPLY_TO, priority=0,
        ),
    }
    hybrid_body = {
        "task": "ignored.because.header.wins", "id": ID, "args": [7], "kwargs": {},
        "retries": 2, "origin": "gen1@old", "callbacks": None, "chord": None,
    }
    yield {
        "name": "wt-decode-hybrid",
        "description": "The hybrid form: protocol-2 headers with a protocol-1 mapping body. "
        "The body supplies header values, the real headers override them (Celery's "
        "hybrid_to_proto2).",
        "frame": vectorfile.frame_json(
            json.dumps(hybrid_body).encode(), "application/json", "utf-8",
            {"task": "proj.tasks.double", "id": ID, "lang": "py"},
            {"correlation_id": ID, "delivery_mode": 2},
        ),
        "message": TaskMessage(
            task="proj.tasks.double", id=ID, args=(7,), retries=2, origin="gen1@old"
        ),
    }


def _frame(body: bytes | str, headers: dict[str, Any], properties: dict[str, Any] | None = None,
           content_type: str = "application/json",
           content_encoding: str = "utf-8") -> dict[str, Any]:
    if isinstance(body, str):
        body = body.encode()
    return vectorfile.frame_json(body, content_type, content_encoding, headers, properties or {})


GOOD_HEADERS = {"task": "proj.tasks.add", "id": ID}
GOOD_BODY = "[[1, 2], {}, null]"


def invalid() -> Iterator[tuple[str, str, dict[str, Any], str, str, dict[str, Any]]]:
    """(name, description, frame, error class, error field, extra decode arguments)."""

    def headers(**changes: Any) -> dict[str, Any]:
        out = {**GOOD_HEADERS, **changes}
        return {k: v for k, v in out.items() if v is not _DROP}

    yield ("body-two-elements", "A 2-element body kills a Celery worker; refused.",
           _frame("[[4, 5], {}]", headers()), "MalformedMessage", "body", {})
    yield ("body-not-a-list", "A protocol-2 body that is neither a list nor a mapping.",
           _frame('"hello"', headers()), "MalformedMessage", "body", {})
    yield ("body-mapping-without-args", "A task header with a mapping body lacking args.",
           _frame('{"a": 1}', headers()), "MalformedMessage", "body", {})
    yield ("args-not-a-list", "args must be a list.",
           _frame('["x", {}, null]', headers()), "MalformedMessage", "body.args", {})
    yield ("kwargs-not-a-mapping", "kwargs must be a mapping.",
           _frame("[[], [1], null]", headers()), "MalformedMessage", "body.kwargs", {})
    yield ("kwargs-int-keys-msgpack", "msgpack maps with int keys are refused by the decoder "
           "(Kombu's strict_map_key), before any shape check.",
           _frame(b"\x93\x90\x81\x01\x02\xc0", headers(), content_type="application/x-msgpack",
                  content_encoding="binary"), "DecodeError", "body", {})
    yield ("embed-not-a-mapping", "The third body element must be a mapping or null.",
           _frame("[[], {}, [1]]", headers()), "MalformedMessage", "embed", {})
    yield ("callbacks-not-a-list", "embed.callbacks must be a list of signatures.",
           _frame('[[], {}, {"callbacks": {"task": "x"}}]', headers()),
           "MalformedMessage", "embed.callbacks", {})
    yield ("callback-without-task", "A signature needs a task name.",
           _frame('[[], {}, {"callbacks": [{"args": []}]}]', headers()),
           "MalformedMessage", "embed.callbacks[0].task", {})
    yield ("errback-bad-args", "A signature's args must be a list.",
           _frame('[[], {}, {"errbacks": [{"task": "t", "args": 5}]}]', headers()),
           "MalformedMessage", "embed.errbacks[0].args", {})
    yield ("chord-not-a-mapping", "embed.chord must be a signature mapping or null.",
           _frame('[[], {}, {"chord": "x"}]', headers()), "MalformedMessage", "embed.chord", {})
    yield ("missing-id", "Without an id header a Celery worker loops forever; refused.",
           _frame(GOOD_BODY, headers(id=_DROP)), "MalformedMessage", "headers.id", {})
    yield ("id-not-a-string", "The id must be a string.",
           _frame(GOOD_BODY, headers(id=5)), "MalformedMessage", "headers.id", {})
    yield ("task-empty", "The task name must not be empty.",
           _frame(GOOD_BODY, headers(task="")), "MalformedMessage", "headers.task", {})
    yield ("task-null", "A null task header is still a protocol-2 message, without a task.",
           _frame(GOOD_BODY, headers(task=None)), "MalformedMessage", "headers.task", {})
    yield ("no-task-anywhere", "No task header and a list body: neither protocol.",
           _frame(GOOD_BODY, {"id": ID}), "MalformedMessage", "headers.task", {})
    yield ("eta-garbage", "An unparsable eta (Celery sends it, its worker rejects it).",
           _frame(GOOD_BODY, headers(eta="garbage")), "MalformedMessage", "headers.eta", {})
    yield ("eta-before-1970", "An eta before the epoch.",
           _frame(GOOD_BODY, headers(eta="1969-07-20T20:17:00+00:00")),
           "MalformedMessage", "headers.eta", {})
    yield ("expires-a-number", "expires must be an ISO 8601 string.",
           _frame(GOOD_BODY, headers(expires=1234567890)), "MalformedMessage",
           "headers.expires", {})
    yield ("timelimit-one-element", "timelimit must be [hard, soft].",
           _frame(GOOD_BODY, headers(timelimit=[30])), "MalformedMessage",
           "headers.timelimit", {})
    yield ("timelimit-string", "timelimit limits must be numbers or null.",
           _frame(GOOD_BODY, headers(timelimit=["30", None])), "MalformedMessage",
           "headers.timelimit", {})
    yield ("retries-negative", "retries must be a non-negative integer.",
           _frame(GOOD_BODY, headers(retries=-1)), "MalformedMessage", "headers.retries", {})
    yield ("stamps-not-a-mapping", "stamps must be a mapping.",
           _frame(GOOD_BODY, headers(stamps=["x"])), "MalformedMessage", "headers.stamps", {})
    yield ("protocol1-with-protocol2-header", "No task header, but an id header next to a "
           "protocol-1 body: refused rather than guessed.",
           _frame('{"task": "t", "id": "x", "args": [], "kwargs": {}}', {"id": "other"}),
           "MalformedMessage", "headers.id", {})
    yield ("priority-out-of-range", "priority must be 0-255.",
           _frame(GOOD_BODY, headers(), {"priority": 300}), "MalformedMessage",
           "properties.priority", {})
    yield ("delivery-mode-3", "delivery_mode must be 1 or 2.",
           _frame(GOOD_BODY, headers(), {"delivery_mode": 3}), "MalformedMessage",
           "properties.delivery_mode", {})
    yield ("expiration-not-digits", "expiration must be milliseconds as a decimal string.",
           _frame(GOOD_BODY, headers(), {"expiration": "soon"}), "MalformedMessage",
           "properties.expiration", {})
    yield ("correlation-id-not-a-string", "correlation_id must be a string.",
           _frame(GOOD_BODY, headers(), {"correlation_id": 7}), "MalformedMessage",
           "properties.correlation_id", {})
    yield ("pickle-refused", "Pickle is never accepted by default.",
           _frame(b"\x80\x04K\x01.", headers(), content_type="application/x-python-serialize",
                  content_encoding="binary"), "ContentDisallowed", "content_type", {})
    yield ("refused-before-decompressing", "A refused content type with a corrupt compressed "
           "body: the accept check comes first, so the error is ContentDisallowed, not a "
           "decompression error.",
           _frame(b"not zlib at all", headers(compression="application/x-gzip"),
                  content_type="application/x-yaml"), "ContentDisallowed", "content_type", {})
    yield ("accept-json-only", "A msgpack body when the caller accepts only JSON.",
           _frame(b"\x93\x90\x80\xc0", headers(), content_type="application/x-msgpack",
                  content_encoding="binary"), "ContentDisallowed", "content_type",
           {"accept": ["json"]})
    yield ("unknown-compression", "A compression header no registered compressor matches.",
           _frame(GOOD_BODY, headers(compression="application/x-foo")), "DecodeError",
           "compression", {})
    yield ("corrupt-zlib", "A zlib header with bytes that are not a zlib stream.",
           _frame(b"definitely not zlib", headers(compression="application/x-gzip")),
           "DecodeError", "compression", {})
    yield ("decompression-bomb", "1 MiB of zeros in a 1 KiB zlib stream, with a 64 KiB cap.",
           _frame(zlib.compress(b"[" + b" " * (1 << 20) + b"]"),
                  headers(compression="application/x-gzip")),
           "MessageTooLarge", "body", {"max_size": 65536})
    yield ("json-syntax-error", "A body that is not JSON.",
           _frame(b"[[1, 2], {}, nul", headers()), "DecodeError", "body", {})
    yield ("json-empty-body", "An empty JSON body.",
           _frame(b"", headers()), "DecodeError", "body", {})
    yield ("json-not-utf8", "JSON bytes that are not UTF-8.",
           _frame(b'[["\xff"], {}, null]', headers()), "DecodeError", "body", {})
    # Nesting (spec §9, §11.3): the body document nests at most MAX_DEPTH = 254 levels.
    # Here the body list, the embed, callbacks, the signature and its args are 5 levels.
    deep = b"[" * 251 + b"1" + b"]" * 251
    yield ("body-nested-too-deep", "A link callback whose args list holds 250 nested lists: "
           "the body document is 255 levels, one past the limit (such a message used to "
           "decode, and encode then failed with a RecursionError).",
           _frame(b'[[], {}, {"callbacks": [{"task": "cb", "args": ' + deep + b"}]}]",
                  headers()), "DecodeError", "body", {})
    yield ("body-nested-too-deep-msgpack", "The same limit on a msgpack body: args holding "
           "253 arrays, 255 levels in all.",
           _frame(b"\x93\x91" + b"\x91" * 253 + b"\x01\x80\xc0", headers(),
                  content_type="application/x-msgpack", content_encoding="binary"),
           "DecodeError", "body", {})
    yield ("header-nested-too-deep", "A custom header whose value nests 254 lists deep: the "
           "headers mapping is 255 levels.",
           _frame(GOOD_BODY, headers(**{"x-deep": json.loads("[" * 254 + "]" * 254)})),
           "MalformedMessage", "headers.x-deep", {})
    yield ("content-encoding-with-nul", "A body with no decoder (no content type) whose "
           "content_encoding holds a NUL: no charset has that name (found by "
           "fuzz/fuzz_amqp_message.py: Python's codec lookup raised ValueError, not "
           "LookupError).",
           _frame(GOOD_BODY, headers(), content_type="", content_encoding="utf\x00-8"),
           "DecodeError", "body", {})


class _Drop:
    """Marks a header to leave out."""


_DROP = _Drop()


def main() -> None:
    registry = default_registry()
    written = []
    for name, description, message in encoded_cases():
        frame = encode(message, registry)
        vectorfile.write(
            {
                "name": name,
                "description": description,
                "source": SOURCE,
                "direction": "both",
                "frame": vectorfile.frame_json(
                    frame.body, frame.content_type, frame.content_encoding,
                    dict(frame.headers), dict(frame.properties),
                ),
                "message": vectorfile.message_json(message),
            },
            HERE / f"{name}.json",
        )
        written.append(name)
    for case in hand_made():
        vectorfile.write(
            {
                "name": case["name"],
                "description": case["description"],
                "source": SOURCE,
                "direction": "decode",
                "frame": case["frame"],
                "message": vectorfile.message_json(case["message"]),
            },
            HERE / f"{case['name']}.json",
        )
        written.append(case["name"])
    for name, description, frame, error, field, extra in invalid():
        vectorfile.write(
            {
                "name": name,
                "description": description,
                "source": SOURCE,
                "frame": frame,
                **extra,
                "error": {"class": error, "field": field},
            },
            HERE / "invalid" / f"{name}.json",
        )
        written.append(f"invalid/{name}")
    print(f"wrote {len(written)} vectors")


if __name__ == "__main__":
    main()
