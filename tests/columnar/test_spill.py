"""Ids the batch dedup moved to disk: found again exactly, newest anchor first, folder removed."""

from __future__ import annotations

import gc

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from headwater.columnar import idtable
from headwater.columnar.spill import SpilledAnchors
from headwater.windowing.rules import NO_TIME


def test_an_id_moved_out_twice_gets_its_newest_anchor_and_others_none():
    spilled = SpilledAnchors()
    assert spilled.get(pa.array(["a"])).tolist() == [NO_TIME]  # nothing written yet
    spilled.put(pa.array(["a", "b", "é日本"]), np.array([10, 20, 30]))
    spilled.put(pa.array(["b", "c"]), np.array([5, 40]))
    got = spilled.get(pa.array(["c", "a", "zz", "b", "é日本", ""]))
    assert got.tolist() == [40, 10, NO_TIME, 20, 30, NO_TIME]
    assert (spilled.runs, len(spilled)) == (2, 5)


def test_ids_sharing_a_hash_are_told_apart_by_their_bytes(monkeypatch):
    """Every id of one length shares a hash here: only the id comparison separates them."""
    monkeypatch.setattr(
        idtable,
        "hash_ids",
        lambda ids: pc.binary_length(ids).to_numpy().astype(np.uint64),
    )
    spilled = SpilledAnchors()
    spilled.put(pa.array(["ab", "cd", "ef", "xyz"]), np.array([1, 2, 3, 4]))
    spilled.put(pa.array(["cd", "gh"]), np.array([7, 8]))
    got = spilled.get(pa.array(["ef", "gh", "cd", "zz", "xyz", "ab"]))
    assert got.tolist() == [3, 8, 7, NO_TIME, 4, 1]


def test_the_runs_live_in_a_temporary_folder_removed_with_the_store():
    spilled = SpilledAnchors()
    spilled.put(pa.array(["a"]), np.array([1]))
    folder = spilled._folder
    assert folder is not None
    assert any(folder.iterdir())
    del spilled
    gc.collect()
    assert not folder.exists()


def test_a_folder_it_cannot_write_is_an_error_that_says_what_to_set(tmp_path, monkeypatch):
    """No room (here: no such folder) names the folder and TMPDIR, not a bare OSError."""
    import tempfile

    import pytest

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    spilled = SpilledAnchors()
    with pytest.raises(OSError, match=r"missing.*set TMPDIR to a writable local folder"):
        spilled.put(pa.array(["a"]), np.array([1]))


def test_a_full_disk_is_an_error_that_names_the_folder_and_leaves_no_partial_run(monkeypatch):
    import errno

    import pytest

    from headwater.columnar import spill as spill_module

    spilled = SpilledAnchors()
    spilled.put(pa.array(["a"]), np.array([1]))
    real = spill_module.ipc.new_file

    def full(path, schema):
        writer = real(path, schema)
        writer.close()
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spill_module.ipc, "new_file", full)
    with pytest.raises(OSError, match=r"could not move 2 ids to .*headwater-dedup-.*TMPDIR"):
        spilled.put(pa.array(["b", "c"]), np.array([2, 3]))
    assert [p.name for p in spilled._folder.iterdir()] == ["run-000000.arrow"]
    assert spilled.get(pa.array(["a", "b"])).tolist() == [1, NO_TIME]
