"""run_split: parts in forked processes, failures named, the caller's part here."""

from __future__ import annotations

import os
import signal

import pytest

from headwater.core import forked
from headwater.core.forked import ForkedWorkError, forked_stream, run_split

pytestmark = pytest.mark.skipif(not forked.CAN_FORK, reason="forks on Linux only")


def _recorder(folder):
    """work(start, stop) writing one file per item holding the pid that handled it."""

    def work(start, stop):
        for item in range(start, stop):
            (folder / f"{item}").write_text(str(os.getpid()))

    return work


def _handled(folder):
    return {int(path.name): int(path.read_text()) for path in folder.iterdir()}


def test_each_part_but_the_first_runs_in_a_child_process(tmp_path):
    run_split(7, _recorder(tmp_path), processes=3)
    handled = _handled(tmp_path)
    assert sorted(handled) == list(range(7))
    # contiguous parts [0, 2), [2, 4), [4, 7): the first here, each other in a process of its own
    assert {handled[i] for i in (0, 1)} == {os.getpid()}
    others = [{handled[i] for i in part} for part in ((2, 3), (4, 5, 6))]
    assert all(len(pids) == 1 for pids in others)
    assert len({os.getpid(), *others[0], *others[1]}) == 3


@pytest.mark.parametrize(("count", "processes"), [(5, 1), (1, 4), (0, 2)])
def test_one_part_runs_here(tmp_path, count, processes):
    """One process, or fewer items than processes: the parts needing a process each."""
    calls = []
    run_split(count, lambda start, stop: calls.append((start, stop)), processes=processes)
    assert calls == [(0, count)]


def test_fewer_items_than_processes_fork_only_what_they_need(tmp_path):
    run_split(2, _recorder(tmp_path), processes=4)
    handled = _handled(tmp_path)
    assert sorted(handled) == [0, 1]
    assert handled[0] == os.getpid() != handled[1]


def test_a_failing_child_fails_the_call_naming_its_part_and_error(tmp_path):
    record = _recorder(tmp_path)

    def work(start, stop):
        if start > 0:
            raise ValueError(f"bad item {start}")
        record(start, stop)

    named = r"items \[2, 4\) in forked process \d+: ValueError: bad item 2"
    with pytest.raises(ForkedWorkError, match=named):
        run_split(4, work, processes=2)
    assert sorted(_handled(tmp_path)) == [0, 1]  # the caller's own part still ran


def test_a_child_killed_by_a_signal_is_named(tmp_path):
    def work(start, stop):
        if start > 0:
            os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(ForkedWorkError, match=f"killed by signal {int(signal.SIGKILL)}"):
        run_split(2, work, processes=2)


def test_the_callers_failure_is_raised_after_the_children_end(tmp_path):
    record = _recorder(tmp_path)

    def work(start, stop):
        if start == 0:
            raise KeyError("mine")
        record(start, stop)

    with pytest.raises(KeyError, match="mine"):
        run_split(6, work, processes=3)
    assert sorted(_handled(tmp_path)) == [2, 3, 4, 5]  # every child had ended and written


@pytest.mark.parametrize("processes", [0, -1, 1.5, True, "2"])
def test_bad_process_counts_are_refused(processes):
    with pytest.raises(ValueError, match=f"processes={processes!r} must be an integer >= 1"):
        run_split(3, lambda start, stop: None, processes=processes)


def _fork_only_once(monkeypatch):
    """The first os.fork forks; any other is refused as under a process limit."""
    real_fork, forks = os.fork, []

    def fork_once():
        if forks:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        forks.append(1)
        return real_fork()

    monkeypatch.setattr(os, "fork", fork_once)


def test_a_part_that_cannot_fork_runs_here_with_a_warning(tmp_path, monkeypatch, caplog):
    """No process to be had (a process limit, memory): the part runs in this process."""
    _fork_only_once(monkeypatch)
    with caplog.at_level("WARNING", logger="headwater.core.forked"):
        run_split(6, _recorder(tmp_path), processes=3)
    handled = _handled(tmp_path)
    assert sorted(handled) == list(range(6))
    # [0, 2) and [4, 6) here, [2, 4) in the one child forked
    assert {handled[i] for i in (0, 1, 4, 5)} == {os.getpid()}
    assert os.getpid() != handled[2] == handled[3]
    assert "items [4, 6) run in this process: no process forked" in caplog.text


# --- forked_stream ---------------------------------------------------------------------------


def _pids(count):
    """produce(index, processes): items ``index, index + processes, ...`` below ``count``, each
    with the pid that computed it."""

    def produce(index, processes):
        for item in range(index, count, processes):
            yield item, os.getpid()

    return produce


@pytest.mark.parametrize(("count", "processes"), [(10, 3), (7, 2), (1, 2), (0, 2)])
def test_a_stream_comes_in_order_item_i_from_child_i_mod_processes(count, processes):
    got = list(forked_stream(_pids(count), processes=processes))
    assert [item for item, _ in got] == list(range(count))
    by_child = {}
    for item, pid in got:
        by_child.setdefault(item % processes, set()).add(pid)
    assert all(len(pids) == 1 for pids in by_child.values())  # one process per child
    pids = {pid for pids in by_child.values() for pid in pids}
    assert os.getpid() not in pids
    assert len(pids) == len(by_child)


def test_one_process_streams_here():
    assert list(forked_stream(_pids(3), processes=1)) == [(i, os.getpid()) for i in range(3)]


def test_a_childs_failure_names_the_item_and_the_error():
    def produce(index, processes):
        for item in range(index, 10, processes):
            if item == 5:
                raise ValueError("bad item 5")
            yield item

    got = []
    named = r"item 5 in forked process \d+: ValueError: bad item 5"
    with pytest.raises(ForkedWorkError, match=named):
        got.extend(forked_stream(produce, processes=2))
    assert got == [0, 1, 2, 3, 4]  # every item before it, in order


def test_a_child_killed_by_a_signal_names_the_item_and_the_signal():
    def produce(index, processes):
        for item in range(index, 10, processes):
            if item == 4:
                os.kill(os.getpid(), signal.SIGKILL)
            yield item

    with pytest.raises(ForkedWorkError, match=f"item 4 .*killed by signal {int(signal.SIGKILL)}"):
        list(forked_stream(produce, processes=2))


def test_closing_a_stream_early_ends_its_children():
    """A caller that stops reading (an error downstream) leaves no process behind."""
    stream = forked_stream(_pids(10**9), processes=2)
    pids = {next(stream)[1], next(stream)[1]}
    stream.close()
    for pid in pids:  # reaped: no such process, not even a zombie
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def test_a_stream_that_cannot_fork_runs_here_with_a_warning(monkeypatch, caplog):
    _fork_only_once(monkeypatch)
    with caplog.at_level("WARNING", logger="headwater.core.forked"):
        got = list(forked_stream(_pids(5), processes=3))
    assert got == [(i, os.getpid()) for i in range(5)]
    assert "computed in this process: no process forked" in caplog.text


@pytest.mark.parametrize("name", ["processes", "ahead"])
def test_bad_stream_counts_are_refused(name):
    counts = {"processes": 2, "ahead": 2, name: 0}
    with pytest.raises(ValueError, match=f"{name}=0 must be an integer >= 1"):
        list(forked_stream(_pids(3), **counts))
