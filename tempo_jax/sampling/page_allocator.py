"""Host-side bookkeeping of the paged KV cache: a page free list with reference counts.

Page 0 of every pool is the scratch page: unused page-table entries point at it and the writes
of idle decode slots land in it, so it is never handed out. A page is free when its reference
count is 0. The n samples of a prompt share the prompt's full pages (one reference each, plus
the prompt's own until its last sample is admitted); the partially filled last prompt page is
copied into each sample's first private page when the sample is admitted (copy on write), so
every page a decode step writes belongs to exactly one row.
"""

from __future__ import annotations

import numpy as np

SCRATCH_PAGE = 0


class PageAllocator:
    """A free list of `num_pages` pool pages (page 0 reserved) with reference counts.

    Attributes:
      num_pages: pages in the pool, the scratch page included.
      peak_in_use: the most pages held at once so far (for reports).
    """

    def __init__(self, num_pages: int):
        if num_pages < 2:
            raise ValueError(f"a page pool needs at least 2 pages (1 scratch), got {num_pages}")
        self.num_pages = num_pages
        self._refs = np.zeros(num_pages, np.int32)
        self._refs[SCRATCH_PAGE] = 1
        # Popped from the end: low page ids first, so small runs touch a compact prefix.
        self._free = list(range(num_pages - 1, 0, -1))
        self.peak_in_use = 0

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def in_use(self) -> int:
        return self.num_pages - 1 - len(self._free)

    def allocate(self, count: int) -> list[int]:
        """`count` fresh pages with one reference each.

        Raises:
          RuntimeError: when fewer than `count` pages are free (the engine reserves pages before
            admitting a row, so this is a bookkeeping bug, never a full pool in normal use).
        """
        if count > len(self._free):
            raise RuntimeError(f"page pool exhausted: {count} pages asked, {len(self._free)} free")
        pages = [self._free.pop() for _ in range(count)]
        self._refs[pages] = 1
        self.peak_in_use = max(self.peak_in_use, self.in_use)
        return pages

    def share(self, pages: list[int]) -> None:
        """One more reference to each of `pages` (a sample reading its prompt's pages)."""
        for page in pages:
            if self._refs[page] < 1 or page == SCRATCH_PAGE:
                raise RuntimeError(f"page {page} is not allocated")
            self._refs[page] += 1

    def release(self, pages: list[int]) -> None:
        """Drops one reference to each of `pages`; those reaching 0 go back to the free list."""
        for page in pages:
            if page == SCRATCH_PAGE or self._refs[page] < 1:
                raise RuntimeError(f"page {page} released but not held")
            self._refs[page] -= 1
            if self._refs[page] == 0:
                self._free.append(page)
