"""The progress line: redrawn in place on a terminal, plain periodic lines anywhere else."""

from __future__ import annotations

import io

from edge.cliutil import ProgressLine


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_pipe_gets_plain_lines_at_most_every_period_and_no_control_code() -> None:
    out, now = io.StringIO(), [0.0]
    progress = ProgressLine(lambda: out, every_s=10.0, clock=lambda: now[0])
    for second in range(25):
        now[0] = float(second)
        progress.update(f"step {second}")
        if second == 12:
            progress.line("anomaly d1")
    progress.update("step 25", force=True)
    progress.close()
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    assert text.splitlines() == ["step 0", "step 10", "anomaly d1", "step 20", "step 25"]


def test_a_terminal_gets_one_line_redrawn_and_events_above_it() -> None:
    out = Terminal()
    progress = ProgressLine(lambda: out, every_s=10.0, clock=lambda: 0.0)
    progress.update("step 1")
    progress.update("step 2")
    progress.line("anomaly d1")
    progress.update("step 3")
    progress.close()
    clear = ProgressLine.CLEAR
    assert out.getvalue() == f"{clear}step 1{clear}step 2{clear}anomaly d1\n{clear}step 3\n"


def test_a_line_without_a_drawn_progress_line_is_plain_on_a_terminal_too() -> None:
    out = Terminal()
    progress = ProgressLine(lambda: out)
    progress.line("starting")
    progress.close()
    assert out.getvalue() == "starting\n"
