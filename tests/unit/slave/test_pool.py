"""slave.pool: the pooled passive ports' table, every move and every refused one."""

from __future__ import annotations

import errno

import pytest

from slave.pool import PoolRefusal, PortPool, PortState


def pool_with(state: PortState) -> PortPool[str]:
    pool: PortPool[str] = PortPool()
    pool.add(4000, "listener")
    if state is not PortState.FREE:
        pool.lend(4000, 7)
    if state is PortState.DIRTY:
        pool.give_back(4000, clean=False)
    return pool


# (state before, move, state after or the errno refused with)
MOVES = [
    (PortState.FREE, "lend", PortState.LENT),
    (PortState.LENT, "lend", errno.EBUSY),
    (PortState.DIRTY, "lend", errno.EBUSY),
    (PortState.FREE, "give_back_clean", errno.EINVAL),
    (PortState.LENT, "give_back_clean", PortState.FREE),
    (PortState.LENT, "give_back_dirty", PortState.DIRTY),
    (PortState.DIRTY, "give_back_clean", errno.EINVAL),
    (PortState.FREE, "cleared", PortState.FREE),
    (PortState.LENT, "cleared", errno.EBUSY),
    (PortState.DIRTY, "cleared", PortState.FREE),
]


def move(pool: PortPool[str], name: str) -> None:
    if name == "lend":
        assert pool.lend(4000, 9) == "listener"
    elif name == "give_back_clean":
        pool.give_back(4000, clean=True)
    elif name == "give_back_dirty":
        pool.give_back(4000, clean=False)
    else:
        pool.cleared(4000)


@pytest.mark.parametrize(("before", "name", "after"), MOVES,
                         ids=[f"{b.value}-{n}" for b, n, _ in MOVES])
def test_move(before: PortState, name: str, after: PortState | int) -> None:
    pool = pool_with(before)
    if isinstance(after, PortState):
        move(pool, name)
        assert pool.state(4000) is after
    else:
        with pytest.raises(PoolRefusal) as refused:
            move(pool, name)
        assert refused.value.errno == after
        assert pool.state(4000) is before  # a refused move changes nothing


def test_unknown_ports_and_the_table() -> None:
    pool: PortPool[str] = PortPool()
    pool.add(4001, "b")
    pool.add(4000, "a")
    with pytest.raises(ValueError):
        pool.add(4000, "again")
    assert pool.ports() == [4000, 4001] and len(pool) == 2 and 4000 in pool
    assert sorted(pool.listeners()) == ["a", "b"]
    assert pool.state(5000) is None
    with pytest.raises(PoolRefusal) as refused:
        pool.lend(5000, 1)
    assert refused.value.errno == errno.ENOTCONN
    with pytest.raises(PoolRefusal) as refused:
        pool.cleared(5000)
    assert refused.value.errno == errno.ENOENT
    with pytest.raises(PoolRefusal) as refused:
        pool.give_back(5000, clean=True)
    assert refused.value.errno == errno.EINVAL
    assert "in use by transfer 3" in str(pool_lent_to(3))
    pool.clear()
    assert len(pool) == 0


def pool_lent_to(xfer_id: int) -> PoolRefusal:
    pool: PortPool[str] = PortPool()
    pool.add(4000, "l")
    pool.lend(4000, xfer_id)
    try:
        pool.check_lendable(4000)
    except PoolRefusal as exc:
        return exc
    raise AssertionError("a lent port was lendable")
