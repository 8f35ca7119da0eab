"""Why softprompt refuses a file: one exception type, a subclass per cause, one message shape.

Every refusal of something read from disk or received over the network is an
:class:`AdapterFileError` (a ``ValueError``) whose message names the file, the field, the value
found, what was expected and what to do::

    run/softprompt.safetensors: config.num_virtual_tokens is '4' (str); expected an integer >= 1.
    The record was edited or written by another program: save the adapter again with softprompt.

Values from a file are shown through :func:`describe` — cut short and with control characters
escaped, so a hostile file cannot flood or drive the terminal that prints the message.

Examples:
    >>> err = RecordError("a.safetensors", "method", ["x"], "one of 'prompt_tuning', 'p_tuning'")
    >>> str(err).splitlines()[0]
    "a.safetensors: method is ['x'] (list); expected one of 'prompt_tuning', 'p_tuning'."
    >>> isinstance(err, AdapterFileError) and isinstance(err, ValueError)
    True
"""

from __future__ import annotations

import os
import reprlib

_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 60
_SHORT.maxlist = _SHORT.maxdict = _SHORT.maxtuple = 6
_SHORT.maxlevel = 3


def short(value: object) -> str:
    """A value read from a file as messages print it: its repr, cut short, control characters escaped."""
    return _SHORT.repr(value)


def describe(value: object) -> str:
    """:func:`short` and the value's type: a '3' (str) where 3 (int) belongs must not print as a number."""
    return short(value) if value is None else f"{short(value)} ({type(value).__name__})"


class AdapterFileError(ValueError):
    """A file softprompt cannot use: corrupt, unsafe, malformed, or made for another model.

    Raised as ``AdapterFileError(path, field, found, expected)`` (``found`` is described with
    :func:`describe`; pass ``found_text`` for a description already made) or, for a message
    already composed, ``AdapterFileError(message)``. ``fix`` says what to do; each subclass has a
    default for its cause.
    """

    fix = "check where the file came from and save or export it again with softprompt"

    def __init__(
        self,
        path: str | os.PathLike,
        field: str | None = None,
        found: object = None,
        expected: str | None = None,
        *,
        found_text: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.path, self.field, self.expected = str(path), field, expected
        self.found = found_text if found_text is not None else describe(found)
        if fix is not None:
            self.fix = fix
        if field is None:  # a message composed by the caller
            message = self.path
        else:
            message = f"{self.path}: {field} is {self.found}; expected {expected}.\n{self.fix[:1].upper()}{self.fix[1:]}."
        super().__init__(message)


class AdapterNotFoundError(AdapterFileError, FileNotFoundError):
    """Nothing at the path (or a folder without an adapter in it)."""

    fix = "check the path; a folder must hold softprompt.safetensors or a peft adapter_config.json"


class SpecialFileError(AdapterFileError):
    """A FIFO, device, socket, symlink loop or dangling link: refused before it is opened."""

    fix = "give the path of a regular file (softprompt does not read from pipes, devices or broken links)"


class UnsafeFileError(AdapterFileError):
    """A pickle (or a zip holding one, as ``torch.save`` writes): refused, never unpickled."""

    fix = (
        "softprompt reads weights with safetensors only, because loading a pickle can run any code; "
        "ask for the adapter as a .safetensors file (softprompt convert, or model.save)"
    )


class CorruptFileError(AdapterFileError):
    """Truncated, flipped or otherwise damaged bytes (including a checksum that does not match)."""

    fix = "the file is damaged (an interrupted copy or download?): copy it again, or save it again"


class RecordError(AdapterFileError):
    """A record or config with a wrong type, an unknown key, a bad value or too much nesting."""

    fix = "the record was edited or written by another program: save the adapter again with softprompt"


class TensorError(AdapterFileError):
    """A tensor with an unexpected name, dtype, shape, or non-finite values."""

    fix = "the saved numbers are unusable as a prompt: train or export the adapter again"


class WrongModelError(AdapterFileError):
    """A file made for another base model (family, shape, vocabulary, task head)."""

    fix = "load it onto the base model it was made for (--base NAME on the command line)"


class VersionError(AdapterFileError):
    """A file format version this softprompt does not read."""

    fix = "upgrade softprompt (pip install -U softprompt) or save the adapter again with this version"
