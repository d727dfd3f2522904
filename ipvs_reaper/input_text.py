"""Reading the files a person hands the command line: a path or `-` for standard input, text only."""

from __future__ import annotations

import sys
from pathlib import Path

from ipvs_reaper.errors import InputError

STDIN = "-"


def source_name(path: str) -> str:
    return "<stdin>" if path == STDIN else path


def read_input_text(path: str) -> str:
    """The file's text (UTF-8), or InputError naming it: missing, unreadable, a directory, or not text."""
    try:
        data = sys.stdin.buffer.read() if path == STDIN else Path(path).read_bytes()
    except OSError as error:
        raise InputError(f"{source_name(path)}: {error.strerror or error}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InputError(
            f"{source_name(path)}: not text (byte {error.start} is not UTF-8): is this the right file?"
        ) from None
    if "\0" in text:
        raise InputError(f"{source_name(path)}: not text (it contains NUL bytes): is this the right file?")
    return text
