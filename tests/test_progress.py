"""Progress bars (tqdm on stderr): the host loops' bar and the sampler's per-step bar."""

import pytest

from karras_jax._progress import progress_bar, step_bar


def test_a_resumed_jobs_bar_starts_where_it_left_off_and_counts_its_unit(capsys):
    bar = progress_bar(100, unit="img", initial=90, label="train ")
    bar.set_postfix(loss="0.25", refresh=False)
    bar.update(10)
    bar.close()
    err = capsys.readouterr().err
    assert "train:" in err and " 90/100" in err and "100/100" in err and "img/s" in err and "loss=0.25" in err


def test_the_step_bar_opens_at_step_0_and_closes_after_the_last_step(capsys):
    show = step_bar(4)
    for i in range(3):
        show(i)
    assert not capsys.readouterr().err.endswith("\n")  # still open after step 2 of 4
    show(3)
    err = capsys.readouterr().err
    assert "sampling" in err and "4/4" in err and err.endswith("\n")


def test_each_call_of_the_sampler_draws_its_own_bar(capsys):
    show = step_bar(3)
    for _ in range(2):
        for i in range(3):
            show(i)
    err = capsys.readouterr().err
    assert err.count("0/3") == 2 and err.count("3/3") == 2


def test_a_step_reported_twice_in_a_row_moves_the_bar_once(capsys):
    show = step_bar(3)
    for i in (0, 0, 1, 1, 2, 2):  # one callback per vmapped sample
        show(i)
    err = capsys.readouterr().err
    assert err.count("0/3") == 1 and "3/3" in err


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_a_bad_total_is_named(bad):
    with pytest.raises(ValueError, match="total"):
        step_bar(bad)
