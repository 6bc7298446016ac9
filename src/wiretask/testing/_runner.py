"""What both conformance kits share: the report, the error, and running checks under a
time limit."""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable, Iterable, Mapping
from typing import NoReturn, Protocol

import attrs

__all__ = ["ConformanceError", "ConformanceReport"]


@attrs.frozen
class ConformanceReport:
    """What ``check_transport`` or ``check_backend`` did.

    Attributes:
        transport: the URL of the transport or result backend checked (password masked
            by it).
        passed: names of the checks that passed, in order.
        skipped: ``(name, reason)`` of checks that did not apply or were skipped.
        failed: ``(name, problem)`` of checks that failed (only with ``fail_fast=False``;
            a report with failures is attached to the ``ConformanceError``).
        checks: every check of the kit, in the order they run.
    """

    transport: str
    passed: tuple[str, ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()
    failed: tuple[tuple[str, str], ...] = ()
    checks: tuple[str, ...] = ()

    @property
    def ran(self) -> tuple[str, ...]:
        """Names of the checks that ran (passed or failed), in order."""
        failed = [name for name, _ in self.failed]
        order = self.checks or (*self.passed, *failed)
        return tuple(name for name in order if name in failed or name in self.passed)

    def __str__(self) -> str:
        lines = [f"conformance of {self.transport}: {len(self.passed)} passed, "
                 f"{len(self.skipped)} skipped, {len(self.failed)} failed"]
        lines += [f"  PASS {name}" for name in self.passed]
        lines += [f"  SKIP {name}: {reason}" for name, reason in self.skipped]
        lines += [f"  FAIL {name}: {problem}" for name, problem in self.failed]
        return "\n".join(lines)


class ConformanceError(AssertionError):
    """A transport or result backend broke its contract. ``check`` names the check,
    ``problem`` says what went wrong; ``report`` is the full report when every check
    was run."""

    def __init__(
        self, check: str, problem: str, *, report: ConformanceReport | None = None
    ) -> None:
        message = f"conformance check {check!r} failed: {problem}"
        if report is not None and len(report.failed) > 1:
            others = "; ".join(f"{name}: {why}" for name, why in report.failed[1:])
            message += f" (also failed: {others})"
        super().__init__(message)
        self.check = check
        self.problem = problem
        self.report = report


class Failed(Exception):
    """Raised inside a check; becomes a ConformanceError naming the check."""


def expect(condition: object, problem: str) -> None:
    if not condition:
        raise Failed(problem)


def fail(problem: str) -> NoReturn:
    raise Failed(problem)


class Kit(Protocol):
    """What ``run_checks`` needs from a kit."""

    def not_applicable(self, name: str) -> str | None:
        """Why check ``name`` does not apply to what is checked, or None."""
        ...

    def check(self, name: str) -> Callable[[], None]:
        """The check called ``name``."""
        ...

    def cleanup(self, *, hung: bool) -> None:
        """Release what the last check opened (``hung``: it is still running)."""
        ...


def select(
    checks: tuple[str, ...], skip: Mapping[str, str] | None, only: Iterable[str] | None
) -> tuple[dict[str, str], set[str]]:
    """Check the ``skip`` and ``only`` arguments of a kit.

    Raises:
        ValueError: an unknown check name.
    """
    skipping = dict(skip or {})
    selected = set(checks if only is None else only)
    unknown = (set(skipping) | selected) - set(checks)
    if unknown:
        raise ValueError(
            f"unknown check name(s) {', '.join(sorted(unknown))}; known: {', '.join(checks)}"
        )
    return skipping, selected


def run_checks(
    kit: Kit, url: str, checks: tuple[str, ...], *, skip: Mapping[str, str],
    selected: set[str], fail_fast: bool, check_timeout: float,
) -> ConformanceReport:
    """Run every selected check of ``kit`` in order, each bounded by ``check_timeout``.

    Raises:
        ConformanceError: a check failed.
    """
    passed: list[str] = []
    skipped: list[tuple[str, str]] = []
    failed: list[tuple[str, str]] = []
    for name in checks:
        if name not in selected:
            skipped.append((name, "not selected"))
            continue
        if name in skip:
            skipped.append((name, skip[name]))
            continue
        reason = kit.not_applicable(name)
        if reason is not None:
            skipped.append((name, reason))
            continue
        problem = _run_bounded(kit, name, check_timeout)
        if problem is None:
            passed.append(name)
            continue
        failed.append((name, problem))
        if fail_fast:
            raise ConformanceError(name, problem)
    report = ConformanceReport(url, tuple(passed), tuple(skipped), tuple(failed), checks)
    if failed:
        raise ConformanceError(failed[0][0], failed[0][1], report=report)
    return report


def _run_bounded(kit: Kit, name: str, timeout: float) -> str | None:
    """Run one check in a thread, bounded by ``timeout``; return the problem or None."""
    outcome: list[str | None] = []
    check = kit.check(name)

    def body() -> None:
        try:
            check()
            outcome.append(None)
        except Failed as exc:
            outcome.append(str(exc))
        except Exception as exc:  # a crash is a failure of the check, with the cause
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            outcome.append(f"raised {detail}")

    thread = threading.Thread(target=body, name=f"wiretask-conformance-{name}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        # The hung thread cannot be stopped; it is a daemon, so it cannot keep the
        # interpreter alive either.
        kit.cleanup(hung=True)
        return f"did not finish within {timeout:g} s (a receive or settle hung?)"
    kit.cleanup(hung=False)
    return outcome[0] if outcome else "ended without a result"
