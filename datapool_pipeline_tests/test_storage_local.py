"""The local datasource: listing with versions, atomic writes, put-if-absent, key safety."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from datapool_pipeline.storage import LocalStorage, check_key


def test_list_is_recursive_sorted_and_versioned(tmp_path: Path) -> None:
    s = LocalStorage(tmp_path)
    for key in ["b/2.jpg", "a.jpg", "b/1.jpg", "c d/ü.png"]:
        s.write_bytes(key, key.encode())
    infos = list(s.list())
    assert [i.key for i in infos] == ["a.jpg", "b/1.jpg", "b/2.jpg", "c d/ü.png"]
    before = s.stat("a.jpg")
    os.utime(tmp_path / "a.jpg", ns=(1, 2))
    assert s.stat("a.jpg").version != before.version  # touching a file is a new version
    assert [i.key for i in s.list("b/")] == ["b/1.jpg", "b/2.jpg"]


def test_put_if_absent_has_exactly_one_winner(tmp_path: Path) -> None:
    s = LocalStorage(tmp_path)
    wins: list[int] = []
    barrier = threading.Barrier(8)

    def attempt(i: int) -> None:
        barrier.wait()
        if s.put_if_absent("commits/1.json", str(i).encode()):
            wins.append(i)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and s.read_bytes("commits/1.json") == str(wins[0]).encode()
    assert [i.key for i in s.list()] == ["commits/1.json"]  # no temporary files left behind


@pytest.mark.parametrize("key", ["../x", "/etc/passwd", "a/../../b", "", "a//b", "./a"])
def test_keys_cannot_escape_the_root(key: str) -> None:
    with pytest.raises(ValueError):
        check_key(key)
