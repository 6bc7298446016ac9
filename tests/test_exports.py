"""The public API is exactly ``wiretask.__all__``, and every name in it resolves."""

from __future__ import annotations

import wiretask


def test_every_exported_name_resolves() -> None:
    missing = [name for name in wiretask.__all__ if not hasattr(wiretask, name)]
    assert missing == []


def test_the_calling_api_is_at_the_top_level() -> None:
    app = wiretask.App("proj", broker="memory://exports", backend="memory://exports")
    try:

        @app.task
        def add(x: int, y: int) -> int:
            return x + y

        assert isinstance(add, wiretask.Task)
        sig = add.s(1)
        assert isinstance(sig, wiretask.TaskSignature)
        # The user-facing signature is Celery's mutable dict (issue 14); its wire value
        # is the frozen Signature, and both are the same dict.
        assert isinstance(sig.to_signature(), wiretask.Signature)
        assert sig.to_signature().to_dict() == wiretask.Signature.from_dict(sig).to_dict()
        assert sig.to_dict() == {"task": add.name, "args": [1], "kwargs": {}, "options": {},
                                 "subtask_type": None, "immutable": False}
        assert add(1, 2) == 3
    finally:
        app.close()


def test_every_error_descends_from_the_root() -> None:
    for name in wiretask.__all__:
        value = getattr(wiretask, name)
        if isinstance(value, type) and issubclass(value, BaseException):
            assert issubclass(value, wiretask.WiretaskError), name
