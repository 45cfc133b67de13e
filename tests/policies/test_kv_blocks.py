"""Paged KV cache accounting: ceil(tokens / block_tokens) blocks a request, never beyond total."""

import numpy as np
import pytest

from moesim.policies import KVBlocks, KVOverflow


def test_blocks_for_rounds_tokens_up_to_whole_blocks() -> None:
    kv = KVBlocks(10, block_tokens=16)
    assert kv.blocks_for(0) == 0
    assert kv.blocks_for(1) == 1
    assert kv.blocks_for(16) == 1
    assert kv.blocks_for(17) == 2
    assert kv.blocks_for(np.array([0, 1, 16, 17, 32, 33])).tolist() == [0, 1, 1, 2, 2, 3]


def test_allocate_grow_and_free_keep_the_totals() -> None:
    kv = KVBlocks(10, block_tokens=16)
    kv.allocate(3, 17)  # 2 blocks
    assert (kv.used_blocks, kv.free_blocks) == (2, 8)
    kv.grow(3, 32)  # still 2 blocks
    assert kv.used_blocks == 2
    kv.grow(3, 33)  # a third
    kv.grow(3, 1)  # never shrinks
    assert kv.held([3]).tolist() == [3]
    kv.allocate([0, 5], [16, 40])  # 1 + 3 blocks
    assert (kv.used_blocks, kv.free_blocks) == (7, 3)
    # request 3 holds 3 blocks (48 tokens): none more; request 0 holds 1 and 80 tokens need 5
    assert kv.needed([3, 0], [48, 80]).tolist() == [0, 4]
    assert kv.held([3, 5, 0, 99]).tolist() == [3, 3, 1, 0]
    kv.free([3, 5])
    assert (kv.used_blocks, kv.free_blocks) == (1, 9)
    assert kv.held([3, 5, 0]).tolist() == [0, 0, 1]


def test_asking_beyond_the_free_blocks_raises_and_changes_nothing() -> None:
    kv = KVBlocks(4, block_tokens=8)
    kv.allocate([0, 1], [16, 8])  # 2 + 1 blocks, 1 free
    with pytest.raises(KVOverflow, match="2 KV blocks asked for, 1 free"):
        kv.grow([0, 1], [24, 16])  # 1 + 1 more
    assert (kv.used_blocks, kv.held([0, 1]).tolist()) == (3, [2, 1])
    with pytest.raises(KVOverflow, match="already holds"):
        kv.allocate(0, 8)
    kv.grow(1, 16)  # the last block
    assert kv.free_blocks == 0


def test_a_cache_of_negative_size_is_refused() -> None:
    with pytest.raises(ValueError, match="-1 blocks"):
        KVBlocks(-1)
