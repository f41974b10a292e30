"""FrameTracker: frame boundaries found in any split of a real frame stream.

The frames are made by the ``websockets`` library's own encoder (client
side: masked; server side: not), so the tracker is checked against real
framing, not against itself.
"""

from __future__ import annotations

import random

import pytest
from websockets.frames import Close, Frame, Opcode

from certgate.proxy.wsframes import GOING_AWAY, FrameTracker, close_frame


def _frames(mask: bool) -> list[bytes]:
    sizes = [0, 1, 125, 126, 127, 65535, 65536, 70000]
    out = [Frame(Opcode.BINARY, bytes([i % 256]) * size).serialize(mask=mask, extensions=[])
           for i, size in enumerate(sizes)]
    out.insert(3, Frame(Opcode.PING, b"hi").serialize(mask=mask, extensions=[]))
    out.append(Frame(Opcode.CLOSE, Close(1000, "bye").serialize()).serialize(
        mask=mask, extensions=[]))
    return out


@pytest.mark.parametrize("mask", [False, True])
def test_boundaries_in_every_split(mask: bool) -> None:
    frames = _frames(mask)
    stream = b"".join(frames)
    ends = set()
    total = 0
    for frame in frames:
        total += len(frame)
        ends.add(total)
    rng = random.Random(12)
    for _ in range(30):
        tracker = FrameTracker()
        offset = 0
        seen = set()
        while offset < len(stream):
            chunk = stream[offset:offset + rng.choice([1, 2, 3, 7, 200, 5000, 100000])]
            position = 0
            while position < len(chunk):
                position += tracker.feed(chunk[position:], stop_at_boundary=True) or \
                    tracker.feed(chunk[position:position + 1])
                if tracker.at_boundary:
                    seen.add(offset + position)
            offset += len(chunk)
        assert seen == ends
        assert tracker.close_seen


def test_close_seen_only_after_a_whole_close_frame() -> None:
    frame = Frame(Opcode.CLOSE, Close(1000, "x").serialize()).serialize(mask=True,
                                                                       extensions=[])
    tracker = FrameTracker()
    tracker.feed(frame[:-1])
    assert not tracker.close_seen
    tracker.feed(frame[-1:])
    assert tracker.close_seen


@pytest.mark.parametrize("masked", [False, True])
def test_close_frame_parses_as_1001(masked: bool) -> None:
    from websockets.frames import Frame as Parsed
    from websockets.streams import StreamReader

    reader = StreamReader()
    reader.feed_data(close_frame(masked=masked))
    parser = Parsed.parse(reader.read_exact, mask=masked, extensions=[])
    try:
        next(parser)
    except StopIteration as done:
        frame = done.value
    else:
        raise AssertionError("the frame did not parse from its bytes")
    close = Close.parse(frame.data)
    assert frame.opcode is Opcode.CLOSE
    assert close.code == GOING_AWAY
