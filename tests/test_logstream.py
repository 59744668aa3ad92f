"""``LogStream``: canonical lines wait for the loop's next turn; nothing else waits or reorders."""

from __future__ import annotations

import asyncio
import io
import math

from proxy.logs.logstream import ATOMIC_WRITE_BYTES, LogStream
from tests.support import WAIT


class RecordingStream(io.StringIO):
    """Keeps each write apart and says when it was flushed."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []
        self.flushes = 0
        self.flushed = asyncio.Event()

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)

    def flush(self) -> None:
        self.flushes += 1
        self.flushed.set()
        super().flush()


async def test_a_queued_line_is_written_and_flushed_on_the_next_loop_turn() -> None:
    output = RecordingStream()
    stream = LogStream(output)

    stream.write_soon('{"event": "request"}\n')
    assert output.getvalue() == ""
    async with asyncio.timeout(WAIT):
        await output.flushed.wait()

    assert output.getvalue() == '{"event": "request"}\n'
    assert output.flushes == 1


async def test_lines_queued_in_one_turn_go_out_in_one_write() -> None:
    output = RecordingStream()
    stream = LogStream(output)

    for number in range(3):
        stream.write_soon(f"line {number}\n")
    async with asyncio.timeout(WAIT):
        await output.flushed.wait()

    assert output.writes == ["line 0\nline 1\nline 2\n"]


async def test_any_other_event_first_writes_the_lines_queued_before_it() -> None:
    output = RecordingStream()
    stream = LogStream(output)

    stream.write_soon("request\n")
    stream.write("proxy_draining\n")
    stream.flush()

    assert output.getvalue() == "request\nproxy_draining\n"


async def test_batches_are_whole_lines_of_at_most_one_atomic_pipe_write() -> None:
    output = RecordingStream()
    stream = LogStream(output)
    lines = [f"{number:04d}{'x' * 995}\n" for number in range(20)]  # 1,000 bytes each

    for line in lines:
        stream.write_soon(line)
    stream.drain()

    assert "".join(output.writes) == "".join(lines)
    assert all(len(batch) <= ATOMIC_WRITE_BYTES for batch in output.writes)
    assert all(batch.endswith("\n") for batch in output.writes)
    lines_per_batch = ATOMIC_WRITE_BYTES // 1000
    assert len(output.writes) == math.ceil(len(lines) / lines_per_batch)


def test_outside_an_event_loop_a_line_is_written_at_once() -> None:
    output = RecordingStream()
    LogStream(output).write_soon("request\n")

    assert (output.getvalue(), output.flushes) == ("request\n", 1)


def test_a_loop_that_stopped_before_its_turn_does_not_hold_back_the_next_loops_lines() -> None:
    output = RecordingStream()
    stream = LogStream(output)
    stopped = asyncio.new_event_loop()

    def stop_then_queue() -> None:
        stopped.stop()  # this turn is the last one: the drain it schedules never runs here
        stream.write_soon("first\n")

    stopped.call_soon(stop_then_queue)
    stopped.run_forever()
    stopped.close()
    assert output.getvalue() == ""

    async def queue_another() -> None:
        stream.write_soon("second\n")
        async with asyncio.timeout(WAIT):
            await output.flushed.wait()

    asyncio.run(queue_another())
    assert output.getvalue() == "first\nsecond\n"
