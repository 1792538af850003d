"""The progress bar of long jobs: done/total, rate, ETA and fields; in place on a terminal."""

import io

from karras_jax._progress import Progress


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_a_log_gets_one_line_per_tenth_with_rate_eta_and_fields():
    out = io.StringIO()
    bar = Progress(100, unit="img", stream=out, label="train ")
    for done in range(0, 101, 5):
        bar.update(done, loss=0.25)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 10 and "\r" not in out.getvalue()
    assert lines[-1].startswith("train [########################] 100% 100/100 img")
    assert "img/s" in lines[0] and "ETA" in lines[0] and "loss 0.25" in lines[0]


def test_a_terminal_gets_one_line_redrawn_in_place():
    out = _Tty()
    bar = Progress(10, stream=out, interval=0.0)
    for done in range(1, 11):
        bar.update(done)
    bar.close()
    text = out.getvalue()
    assert text.count("\r") == 11 and text.endswith("\n") and text.count("\n") == 1
    assert "10/10 it" in text.splitlines()[-1]


def test_a_resumed_job_counts_its_rate_from_where_it_started():
    bar = Progress(100, start=90, stream=io.StringIO())
    assert " 90% 90/100" in bar.line() and "ETA --:--" in bar.line()
