"""Registering a descriptor with the event loop, past uvloop's dead handles.

uvloop keeps one poll handle per descriptor number. When epoll reports an
error on a watched socket (a reset: EPOLLERR), libuv hands uvloop an
error instead of an event; uvloop then runs the descriptor's callbacks
once, closes the handle, and leaves it in its table under that number.
The next ``add_reader``/``add_writer`` for the number raises
``RuntimeError`` ("the handler is closed"), for the same socket and for
any later socket the kernel gives the same number, until something calls
``remove_reader``/``remove_writer`` for it (which drops a handle that
watches nothing). A client that resets at the right moment could thus
make certgate fail every later connection landing on that number.

:func:`add_reader` and :func:`add_writer` drop such a handle and register
again. The callbacks already ran once on the error, and every callback in
certgate reads or writes the socket when run, so the error itself is seen
there; a registration made afterwards is a fresh one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["add_reader", "add_writer"]


def add_reader(loop: asyncio.AbstractEventLoop, fd: int, callback: Callable[[], None]) -> None:
    """``loop.add_reader(fd, callback)``; a dead handle under ``fd`` is dropped first."""
    _register(loop.add_reader, loop, fd, callback)


def add_writer(loop: asyncio.AbstractEventLoop, fd: int, callback: Callable[[], None]) -> None:
    """``loop.add_writer(fd, callback)``; a dead handle under ``fd`` is dropped first."""
    _register(loop.add_writer, loop, fd, callback)


def _register(add: Callable[..., object], loop: asyncio.AbstractEventLoop, fd: int,
              callback: Callable[[], None]) -> None:
    try:
        add(fd, callback)
    except RuntimeError:
        if loop.is_closed():
            raise
        # A dead handle watches nothing (uvloop cleared its callbacks when it
        # ran them), so removing either direction drops it from the table.
        loop.remove_reader(fd)
        loop.remove_writer(fd)
        add(fd, callback)
