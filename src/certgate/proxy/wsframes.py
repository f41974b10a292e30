"""WebSocket frame boundaries in one direction of a tunnel (RFC 6455 section 5.2).

The tunnel pipes bytes without reading them, which is right while it
serves. To end a tunnel cleanly at shutdown, certgate sends each side a
Close frame (1001, "going away"), and a frame can only go between two
frames, never inside one. :class:`FrameTracker` follows where frames begin
and end in a byte stream without buffering it: it reads each frame header
(2 to 14 bytes) and skips the payload by count, so following a stream costs
a few operations per frame, whatever the frame sizes. Control frames may sit
between the fragments of a message (section 5.4), so any frame boundary will
do. Extensions (permessage-deflate) only set RSV bits and do not change
framing.

Sans-IO: bytes in, offsets and flags out.
"""

from __future__ import annotations

import os
import struct

OP_CLOSE = 0x8
GOING_AWAY = 1001  # section 7.4.1: "an endpoint is going away, such as a server going down"
GOING_AWAY_REASON = b"certgate is shutting down"


class FrameTracker:
    """Follows frame boundaries in one direction; see the module docstring."""

    def __init__(self) -> None:
        self._header = bytearray()
        self._remaining = 0  # payload bytes of the current frame still to come
        self._opcode = 0
        #: A whole Close frame has passed (the sender has begun the closing handshake).
        self.close_seen = False

    @property
    def at_boundary(self) -> bool:
        return not self._header and self._remaining == 0

    def feed(self, data: bytes | memoryview, *, stop_at_boundary: bool = False) -> int:
        """Follow ``data``; return how many bytes were taken.

        With ``stop_at_boundary`` the tracker stops at the first frame
        boundary it reaches (0 if it is at one already), so the caller can
        forward exactly the rest of the current frame and nothing more.
        """
        view = memoryview(data)
        taken = 0
        while taken < len(view):
            if stop_at_boundary and self.at_boundary:
                return taken
            if self._remaining:
                step = min(self._remaining, len(view) - taken)
                taken += step
                self._remaining -= step
                if not self._remaining:
                    self._frame_done()
                continue
            need = _header_length(self._header)
            step = min(need - len(self._header), len(view) - taken)
            self._header += view[taken:taken + step]
            taken += step
            if len(self._header) == need and _header_length(self._header) == need:
                self._start_frame()
        return taken

    def _start_frame(self) -> None:
        header = bytes(self._header)
        self._header.clear()
        self._opcode = header[0] & 0x0F
        length = header[1] & 0x7F
        if length == 126:
            length = struct.unpack_from("!H", header, 2)[0]
        elif length == 127:
            length = struct.unpack_from("!Q", header, 2)[0]
        self._remaining = length
        if not length:
            self._frame_done()

    def _frame_done(self) -> None:
        if self._opcode == OP_CLOSE:
            self.close_seen = True


def _header_length(header: bytearray) -> int:
    """Bytes in the frame header that starts with ``header`` (2 until the
    second byte is known)."""
    if len(header) < 2:
        return 2
    length = header[1] & 0x7F
    extended = 2 if length == 126 else 8 if length == 127 else 0
    return 2 + extended + (4 if header[1] & 0x80 else 0)


def close_frame(*, masked: bool, code: int = GOING_AWAY,
                reason: bytes = GOING_AWAY_REASON) -> bytes:
    """A Close frame; ``masked`` for frames certgate sends as the client
    (towards the upstream: section 5.3 requires a client to mask every frame)."""
    payload = struct.pack("!H", code) + reason
    assert len(payload) <= 125  # a control frame's payload (section 5.5)
    if not masked:
        return bytes([0x80 | OP_CLOSE, len(payload)]) + payload
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | OP_CLOSE, 0x80 | len(payload)]) + mask + body
