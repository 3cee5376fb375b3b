"""Argument types for the ``dnanet`` command line, and the check that a daemon's port is free.

argparse calls each type on an option's text. A bad value stops the command at once, naming
the option and what is wrong (``dnanet node run: error: argument --port: ...``), before any
keystore is read, password asked or daemon started. `verify_port_free` does the same for a
port another process holds.
"""

from __future__ import annotations

import argparse
import decimal
import errno
import math
import re
import socket

from dnanet.errors import ConfigError
from dnanet.params import WEI_PER_DNA

MAX_TEXT = 80
"""The longest number these types read (a bound on the work a typo can cause)."""
_WHOLE = re.compile(r"-?[0-9]+")


def _integer(text: str) -> int:
    text = text.strip()
    if len(text) > MAX_TEXT or not _WHOLE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}")
    return int(text)


def _refuse_unless(ok: bool, why: str) -> None:
    if not ok:
        raise argparse.ArgumentTypeError(why)


def positive_int(text: str) -> int:
    """A whole number of at least 1 (a count)."""
    value = _integer(text)
    _refuse_unless(value >= 1, f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """A whole number of at least 0 (a block number, a count that may be none)."""
    value = _integer(text)
    _refuse_unless(value >= 0, f"must be 0 or more, got {value}")
    return value


def port(text: str) -> int:
    """A TCP port, 0 to 65535 (0: any free port, which the daemon prints)."""
    value = _integer(text)
    _refuse_unless(0 <= value <= 65535, f"a port is 0 to 65535, got {value}")
    return value


def _real(text: str) -> float:
    try:
        value = float(text) if len(text) <= MAX_TEXT else math.nan
    except ValueError:
        value = math.nan
    _refuse_unless(math.isfinite(value), f"not a finite number: {text!r}")
    return value


def seconds(text: str) -> float:
    """A duration in seconds, 0 or more."""
    value = _real(text)
    _refuse_unless(value >= 0, f"must be 0 or more seconds, got {text}")
    return value


def slowdown(text: str) -> float:
    """A slowdown factor, 1 or more (1: full speed)."""
    value = _real(text)
    _refuse_unless(value >= 1, f"a slowdown is 1 or more, got {text}")
    return value


def fraction(text: str) -> float:
    """A fraction from 0 to 1."""
    value = _real(text)
    _refuse_unless(0 <= value <= 1, f"a fraction is 0 to 1, got {text}")
    return value


def dna_amount(text: str) -> int:
    """A positive amount of DNA, in whole or decimal DNA (``100``, ``0.5``), as an exact
    number of wei (10^-18 DNA): money is never a float."""
    text = text.strip()
    try:
        if len(text) > MAX_TEXT:
            raise decimal.InvalidOperation
        amount = decimal.Decimal(text)
    except decimal.InvalidOperation:
        raise argparse.ArgumentTypeError(f"not an amount of DNA: {text!r}") from None
    if not amount.is_finite() or amount <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive amount of DNA, got {text}")
    with decimal.localcontext(prec=2 * MAX_TEXT):
        wei = amount * WEI_PER_DNA
    if wei != wei.to_integral_value():
        raise argparse.ArgumentTypeError(f"{text} DNA is finer than 1 wei (10^-18 DNA)")
    return int(wei)


def verify_port_free(host: str, port: int) -> None:
    """Raise ConfigError, naming the port, unless a server could listen on ``host``:``port``
    now (bound as the daemons bind: SO_REUSEADDR). Port 0 (any free port) always passes."""
    if port == 0:
        return
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(f"--host {host!r} is not an address of this machine: {exc}") from None
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                why = "is in use by another process (another dnanet daemon?): stop it or " \
                      "choose another --port"
            elif exc.errno == errno.EACCES:
                why = "needs privileges this user lacks (ports below 1024): choose another " \
                      "--port"
            elif exc.errno == errno.EADDRNOTAVAIL:
                why = "cannot be bound: no interface of this machine has that --host"
            else:
                why = f"cannot be bound: {exc.strerror or exc}"
            raise ConfigError(f"port {port} on {host} {why}") from None


__all__ = ["dna_amount", "fraction", "non_negative_int", "port", "positive_int", "seconds",
           "slowdown", "verify_port_free"]
