"""Leases in the catalog (store.take_lease): one holder per name across processes and
machines sharing it, in both stores; a search pyramid's builder holds one."""

from __future__ import annotations

import threading

from tileserver.catalog.access import Principal, ScopedStore


def test_one_holder_until_released(store):
    assert store.lease_holder("pyramid:a") is None
    assert store.take_lease("pyramid:a", "one", 60)
    assert not store.take_lease("pyramid:a", "two", 60)
    assert store.lease_holder("pyramid:a") == "one"
    assert store.take_lease("pyramid:a", "one", 60)  # ours already: renewed
    assert store.renew_lease("pyramid:a", "one", 60)
    assert not store.renew_lease("pyramid:a", "two", 60)
    store.release_lease("pyramid:a", "two")  # not theirs: nothing happens
    assert store.lease_holder("pyramid:a") == "one"
    assert store.take_lease("pyramid:b", "two", 60)  # another name is another lease
    store.release_lease("pyramid:a", "one")
    assert store.lease_holder("pyramid:a") is None
    assert store.take_lease("pyramid:a", "two", 60)
    assert store.lease_holder("pyramid:a") == "two"


def test_an_expired_lease_is_taken_over(store):
    assert store.take_lease("pyramid:a", "one", -1)  # expired at once: its holder is gone
    assert store.lease_holder("pyramid:a") is None
    assert store.take_lease("pyramid:a", "two", 60)
    assert store.lease_holder("pyramid:a") == "two"
    assert not store.renew_lease("pyramid:a", "one", 60)  # the old holder learns it lost it
    store.release_lease("pyramid:a", "one")
    assert store.lease_holder("pyramid:a") == "two"


def test_of_workers_racing_for_a_lease_exactly_one_wins(store):
    for round_ in range(3):
        won: list[str] = []
        start = threading.Barrier(6)

        def race(owner: str, name: str, start: threading.Barrier, won: list[str]) -> None:
            start.wait()
            if store.take_lease(name, owner, 60):
                won.append(owner)

        name = f"pyramid:race{round_}"
        threads = [
            threading.Thread(target=race, args=(f"w{i}", name, start, won)) for i in range(6)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(won) == 1, won
        assert store.lease_holder(f"pyramid:race{round_}") == won[0]


def test_a_scoped_store_shares_the_catalog_s_leases(store):
    scoped = ScopedStore(store, Principal(user="someone"))
    assert scoped.take_lease("pyramid:a-scope", "one", 60)
    assert store.lease_holder("pyramid:a-scope") == "one"
    assert not store.take_lease("pyramid:a-scope", "two", 60)
    scoped.release_lease("pyramid:a-scope", "one")
    assert store.lease_holder("pyramid:a-scope") is None
