"""Mempool.has_includable: txs parked behind a missing nonce are not work for a primary."""

from __future__ import annotations

from tests.node.test_mempool import key, pool, tx


def test_gapped_txs_are_not_includable() -> None:
    mp, _checker, _ = pool()
    assert not mp.has_includable()
    mp.add(tx(1, 1))  # nonce 0 was lost on the way: 1 and 2 wait behind the gap
    mp.add(tx(1, 2))
    assert len(mp) == 2 and not mp.has_includable()
    assert mp.reap(10, 1 << 20) == []  # what has_includable promises: nothing to propose
    mp.add(tx(2, 0))  # another sender's next nonce: work again
    assert mp.has_includable()
    mp.update(1, [mp.reap(10, 1 << 20)[0].hash])
    assert not mp.has_includable()
    mp.add(tx(1, 0))  # the missing tx arrives: the whole run is includable
    assert mp.has_includable()


def test_a_commit_elsewhere_can_make_txs_includable() -> None:
    mp, checker, _ = pool()
    mp.add(tx(1, 1))
    assert not mp.has_includable()
    checker.nonces[key(1).public_key] = 1  # nonce 0 committed from another node's mempool
    assert not mp.has_includable()  # cached until the pool or the state moves ...
    mp.update(5, [])  # ... which a commit signals
    assert mp.has_includable()
