"""Every storage test runs on both backends through the ``backend`` fixture."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from storage.kv import KV, LevelDBKV, MemoryKV
from storage.store import Store


class Backend:
    """Opens, closes and reopens one store on one backend (a restart, for LevelDB)."""

    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.path = path
        self._memory: MemoryKV | None = None
        self.store: Store | None = None

    def open_kv(self) -> KV:
        if self.name == "leveldb":
            return LevelDBKV(self.path)
        self._memory = MemoryKV() if self._memory is None else self._memory.reopened()
        return self._memory

    def open(self) -> Store:
        self.close()
        kv = self.open_kv()
        try:
            self.store = Store(kv)
        except Exception:
            kv.close()  # a refused open must not keep the LevelDB lock
            raise
        return self.store

    def close(self) -> None:
        if self.store is not None and not self.store.kv.closed:
            self.store.close()
        self.store = None


@pytest.fixture(params=["memory", "leveldb"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    b = Backend(request.param, tmp_path / "db")
    yield b
    b.close()


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.open()
