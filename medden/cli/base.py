"""The ``medden`` application object, its consoles, the shared option parsers and :func:`main`.

Every user-caused problem is a :class:`~medden.errors.MeddenError`; :func:`main` prints it as one line on stderr
and exits with status 2 (1 for an unexpected internal error; set ``MEDDEN_DEBUG=1`` to see its traceback). SIGTERM
(a batch scheduler's cancel) is handled like Ctrl-C: partial outputs are removed and the manifest records it.
"""
from __future__ import annotations

import math
import os
import signal
import sys
from contextlib import contextmanager
from typing import Iterator

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from medden._version import __version__
from medden.errors import MeddenError, ParameterError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Denoise 3D medical scans (CT, MRI, PET/SPECT) and measure what the denoising kept.")
out = Console(highlight=False, markup=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, markup=False, soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        out.print(f"medden {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Denoise 3D medical scans and measure what the denoising kept."""


@contextmanager
def steps(quiet: bool) -> Iterator:
    """A progress display with one line per step (spinner and elapsed time) on a terminal; silent with --quiet
    and when stderr is not a terminal (batch logs keep only results and errors)."""
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err,
                  disable=quiet or not err.is_terminal, transient=False) as progress:
        current: list[int] = []

        def step(text: str) -> None:
            if current:
                progress.update(current[-1], completed=1, total=1)
            current.append(progress.add_task(text, total=None))

        yield step
        if current:
            progress.update(current[-1], completed=1, total=1)


def parse_params(items: list[str] | None) -> dict[str, str]:
    """``--param NAME=VALUE`` pairs, read by :func:`medden.registry.parse_assignments` (imported when called, so
    ``--help`` stays light); the values are parsed by the method's or noise model's own parameter types."""
    from medden.registry import parse_assignments

    return parse_assignments(items)


def parse_sigma(text: str | None, option: str = "--sigma", allow_auto: bool = True) -> float | str | None:
    """``auto``, a number in the volume's units, or ``N%`` (of the 99.9th percentile of the non-zero voxels): the
    one reading of ``--sigma`` for ``denoise`` and ``simulate``. ``N%`` stays a string, resolved on the volume."""
    if text is None:
        return None
    if allow_auto and text.strip().lower() == "auto":
        return "auto"
    from medden.noise.registry import noise_level  # the noise models' own reading of a level

    try:
        return noise_level(text)
    except ParameterError:
        raise ParameterError(f"{option} must be {'auto, ' if allow_auto else ''}a finite number ≥ 0 in the volume's "
                             f"units, or N% of the 99.9th percentile (e.g. 3%), got {text!r}") from None


def finite(value: float | None, option: str) -> float | None:
    """A number option that must be finite (``inf`` and ``nan`` parse as floats but mean nothing physical)."""
    if value is not None and not math.isfinite(value):
        raise ParameterError(f"{option} must be a finite number, got {value}")
    return value


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that the same clean-up as Ctrl-C runs."""


_TERMINATED: list[int] = []  # set by the handler: typer reports any interrupt as exit status 130


def _on_sigterm(signum, frame) -> None:
    _TERMINATED.append(signum)
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script: returns the exit status instead of printing tracebacks."""
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        return _run(argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(argv: list[str] | None) -> int:
    try:
        code = app(args=argv, standalone_mode=False)
        if code == 130:  # typer's report of an interrupt (Ctrl-C or SIGTERM), after the clean-up ran
            return _stopped(Terminated() if _TERMINATED else KeyboardInterrupt())
        if isinstance(code, int):  # typer.Exit(code) returns its code when not standalone
            return code
    except MeddenError as exc:
        err.print(f"error: {exc}")
        return 2
    except KeyboardInterrupt as exc:
        return _stopped(exc)
    except typer.Exit as exc:
        return exc.exit_code
    except SystemExit as exc:
        return int(exc.code or 0)
    except OSError as exc:  # disk full, permissions, a vanished file: the system's reason in one line
        where = f" {exc.filename}" if exc.filename else ""
        err.print(f"error: cannot read or write{where}: {exc.strerror or exc}")
        return 2
    except Exception as exc:  # usage errors of the argument parser and unexpected failures: one line, no traceback
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):  # click/typer usage error
            err.print(f"error: {exc.format_message()}", soft_wrap=True)
            return int(exc.exit_code) or 2
        if type(exc).__name__ == "Abort":  # click turns KeyboardInterrupt (and so SIGTERM) into Abort
            return _stopped(exc.__context__)
        if os.environ.get("MEDDEN_DEBUG"):
            raise
        text = str(exc).splitlines()[0] if str(exc) else ""
        err.print(f"error: internal error ({type(exc).__name__}: {text}); rerun with MEDDEN_DEBUG=1 for a traceback",
                  soft_wrap=True)
        return 1
    return 0


def _stopped(exc: BaseException | None) -> int:
    """Ctrl-C (130) or SIGTERM (143): the write in progress was removed, a study's manifest records the stop."""
    if isinstance(exc, Terminated):
        err.print("error: terminated (SIGTERM); no partial output was left")
        return 143
    err.print("error: interrupted; no partial output was left")
    return 130


def run() -> None:
    """Console-script wrapper: exits with :func:`main`'s status."""
    sys.exit(main())
