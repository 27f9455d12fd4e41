"""The paged KV-cache block pool: it counts blocks and answers whether an allocation fits.

Which blocks hold what, and which request gives way when the pool runs dry, are not its
business (the scheduler and the policy decide). One pool models GPU memory, another the CPU
swap space.
"""

from __future__ import annotations


class BlockPool:
    __slots__ = ("block_size", "free", "total")

    def __init__(self, total: int, block_size: int = 16) -> None:
        if isinstance(total, bool) or not isinstance(total, int) or total < 0:
            raise ValueError(f"BlockPool: total must be an integer >= 0, got {total!r}")
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"BlockPool: block_size must be an integer >= 1, got {block_size!r}")
        self.total = total
        self.free = total
        self.block_size = block_size

    @property
    def used(self) -> int:
        return self.total - self.free

    def blocks_for(self, tokens: int) -> int:
        """Blocks that hold `tokens` tokens."""
        return -(-tokens // self.block_size)

    def fits(self, blocks: int) -> bool:
        return blocks <= self.free

    def allocate(self, blocks: int) -> None:
        if not 0 <= blocks <= self.free:
            raise ValueError(f"BlockPool: cannot allocate {blocks} blocks, {self.free} free")
        self.free -= blocks

    def release(self, blocks: int) -> None:
        if not 0 <= blocks <= self.used:
            raise ValueError(f"BlockPool: cannot release {blocks} blocks, {self.used} in use")
        self.free += blocks
