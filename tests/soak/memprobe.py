"""Memory probes for the soak server: where its RSS is, and what grows.

Used by ``soak.py`` (the ``stats`` and ``probe`` actions of the ``control`` actor); Linux and
glibc only (elsewhere the glibc and ``/proc`` figures are left out).

* :func:`memory` — cheap, for every sample: RSS split into anonymous, file-backed and shared
  pages (``/proc/self/status``), glibc's malloc heap (``mallinfo2``: bytes handed out, bytes
  free inside the heap), pymalloc's arenas (``sys._debugmallocstats``), live pymalloc blocks
  and, when tracemalloc runs, the bytes it traces.
* :class:`Probe` — expensive, every ``--probe-interval``: live gc-tracked objects by type, the
  tracemalloc allocation sites that grew (against the first probe and against the previous
  one), and optionally ``malloc_trim(0)`` with the RSS before and after (RSS that comes back
  was free memory glibc was holding, not live data).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import ctypes.util
import gc
import os
import re
import sys
import tempfile
import threading
import tracemalloc
from typing import Any

MB = 2**20


class _MallInfo2(ctypes.Structure):
    _fields_ = [  # type: ignore[mutable-override]
        (name, ctypes.c_size_t)
        for name in (
            "arena",  # bytes obtained with sbrk (the main arena's heap)
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",  # bytes in chunks allocated with mmap
            "usmblks",
            "fsmblks",
            "uordblks",  # bytes in use (all arenas)
            "fordblks",  # bytes free inside the arenas (all arenas)
            "keepcost",
        )
    ]


def _libc() -> Any:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallinfo2.restype = _MallInfo2
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


def mallinfo() -> dict[str, float] | None:
    """glibc's view of its heap, in MB: ``in_use`` (handed out to malloc callers), ``free``
    (free chunks inside the arenas: RSS that malloc_trim may give back), ``mmapped`` (large
    chunks mapped on their own), ``main_arena`` (the sbrk heap)."""
    if _LIBC is None:
        return None
    info = _LIBC.mallinfo2()
    return {
        "in_use": round(info.uordblks / MB, 1),
        "free": round(info.fordblks / MB, 1),
        "mmapped": round(info.hblkhd / MB, 1),
        "main_arena": round(info.arena / MB, 1),
        "top_releasable": round(info.keepcost / MB, 1),
    }


def malloc_info() -> list[dict[str, Any]] | None:
    """glibc's ``malloc_info`` per arena (heap 0 is the main, sbrk heap; others belong to
    threads), in MB: ``system`` (mapped for the arena), ``free`` (free chunks, fast bins
    included) and the free bytes by chunk size (``free_by_size``), which tell fragmentation
    (many small holes) from one big free block."""
    if _LIBC is None:
        return None
    import xml.etree.ElementTree as ET

    libc = _LIBC
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    with tempfile.NamedTemporaryFile(suffix=".xml") as tmp:
        fp = libc.fopen(tmp.name.encode(), b"w")
        if not fp:
            return None
        try:
            libc.malloc_info(0, fp)
        finally:
            libc.fclose(fp)
        root = ET.parse(tmp.name).getroot()
    # 65,584 bytes: the chunk of a 64 KiB recv buffer (trio's default receive size); a free
    # chunk just below it cannot serve the next one.
    buckets = (
        (1024, "<1K"),
        (16384, "1K-16K"),
        (32768, "16K-32K"),
        (65584, "32K-64K"),
        (None, ">=64K"),
    )
    heaps = []
    for heap in root.findall("heap"):
        by_size = dict.fromkeys((label for _, label in buckets), 0)
        for size in heap.iter("size"):
            low = int(size.get("from", 0))
            for limit, label in buckets:
                if limit is None or low < limit:
                    by_size[label] += int(size.get("total", 0))
                    break
        free = sum(int(t.get("size", 0)) for t in heap.findall("total"))
        system = next(
            (int(x.get("size", 0)) for x in heap.findall("system") if x.get("type") == "current"),
            0,
        )
        heaps.append(
            {
                "heap": int(heap.get("nr", -1)),
                "system": round(system / MB, 1),
                "free": round(free / MB, 1),
                "free_by_size": {k: round(v / MB, 2) for k, v in by_size.items()},
            }
        )
    return heaps


def malloc_trim() -> bool | None:
    """``malloc_trim(0)``: give free heap pages back to the kernel (every arena)."""
    if _LIBC is None:
        return None
    return bool(_LIBC.malloc_trim(0))


def proc_status() -> dict[str, float]:
    """RSS and its parts in MB (``VmRSS = RssAnon + RssFile + RssShmem``), ``VmHWM`` and
    the thread count, from ``/proc/self/status``."""
    wanted = {"VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM", "VmData", "Threads"}
    out: dict[str, float] = {}
    with contextlib.suppress(OSError), open("/proc/self/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in wanted:
                number = int(value.split()[0])
                out[name] = number if name == "Threads" else round(number / 1024, 1)
    return out


_STAT_LINE = re.compile(r"^#\s*(?P<name>[^=]+?)\s*=\s*(?P<value>[\d,]+)\s*$")
_ARENA_LINE = re.compile(r"^(?P<n>[\d,]+) arenas \* (?P<size>\d+) bytes/arena\s*=\s*(?P<v>[\d,]+)")
_debug_lock = threading.Lock()


def pymalloc() -> dict[str, float] | None:
    """pymalloc's arenas from ``sys._debugmallocstats()`` (written to fd 2; captured through a
    temporary file): arenas mapped now and at most, bytes in live blocks, bytes in free blocks
    and empty pools inside those arenas (fragmentation). None while tracemalloc runs (the
    report is empty when the allocator is hooked)."""
    with _debug_lock, tempfile.TemporaryFile() as tmp:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(tmp.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        text = tmp.read().decode(errors="replace")
    stats: dict[str, int] = {}
    arena_bytes = 0
    for line in text.splitlines():
        if m := _STAT_LINE.match(line):
            stats[m["name"].strip()] = int(m["value"].replace(",", ""))
        elif m := _ARENA_LINE.match(line):
            arena_bytes = int(m["v"].replace(",", ""))
        elif line.startswith("Total") and "=" in line:
            stats["Total"] = int(line.split("=")[1].strip().replace(",", ""))
    if not stats:
        return None  # no report: pymalloc is hooked (tracemalloc) or disabled
    unused_pools = next((v for k, v in stats.items() if k.startswith("unused pools")), 0)
    return {
        "arenas_current": stats.get("arenas allocated current", 0),
        "arenas_highwater": stats.get("arenas highwater mark", 0),
        "arenas_mb": round(arena_bytes / MB, 1),
        "allocated_blocks_mb": round(stats.get("bytes in allocated blocks", 0) / MB, 1),
        "free_blocks_mb": round((stats.get("bytes in available blocks", 0) + unused_pools) / MB, 1),
    }


def memory() -> dict[str, Any]:
    """The cheap figures, for every sample."""
    out: dict[str, Any] = {"proc": proc_status(), "malloc": mallinfo(), "pymalloc": pymalloc()}
    out["allocated_blocks"] = sys.getallocatedblocks()
    if tracemalloc.is_tracing():
        current, _peak = tracemalloc.get_traced_memory()
        out["tracemalloc_mb"] = round(current / MB, 1)
    return out


def _site(stat: Any, frames: int) -> str:
    lines = []
    for frame in list(stat.traceback)[-frames:]:
        filename = frame.filename
        for prefix in sorted(sys.path, key=len, reverse=True):
            if prefix and filename.startswith(prefix + os.sep):
                filename = filename[len(prefix) + 1 :]
                break
        lines.append(f"{filename}:{frame.lineno}")
    return " <- ".join(reversed(lines))


class Probe:
    """The expensive probe; keeps the first and the previous results to diff against."""

    def __init__(self, top: int = 15) -> None:
        self.top = top
        self.first_snapshot: tracemalloc.Snapshot | None = None
        self.last_snapshot: tracemalloc.Snapshot | None = None
        self.first_types: collections.Counter[str] | None = None
        self.last_types: collections.Counter[str] | None = None

    def run(self, *, trim: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"before": memory(), "malloc_info": malloc_info()}
        if trim:
            # First, before the probe's own big temporary lists reach the heap.
            rss_before = out["before"]["proc"].get("VmRSS")
            out["malloc_trim_released"] = malloc_trim()
            out["after_trim"] = memory()
            out["after_trim"]["malloc_info"] = malloc_info()
            out["trim_rss_mb"] = [rss_before, out["after_trim"]["proc"].get("VmRSS")]
        # gc.get_objects() makes a list of every tracked object (MBs): once freed it raises
        # glibc's dynamic mmap threshold, so later probes and samples see a bigger heap.
        out["gc"] = self._types()
        if tracemalloc.is_tracing():
            out["tracemalloc"] = self._tracemalloc()
        return out

    def _types(self) -> dict[str, Any]:
        gc.collect()
        types = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
        out: dict[str, Any] = {"objects": sum(types.values())}
        if self.first_types is not None and self.last_types is not None:
            for label, base in (
                ("growth_since_first", self.first_types),
                ("growth_since_last", self.last_types),
            ):
                diff = collections.Counter(types)
                diff.subtract(base)
                out[label] = {k: v for k, v in diff.most_common(self.top) if v > 0}
        out["top"] = dict(types.most_common(self.top))
        if self.first_types is None:
            self.first_types = types
        self.last_types = types
        return out

    def _tracemalloc(self) -> dict[str, Any]:
        snapshot = tracemalloc.take_snapshot().filter_traces(
            (
                tracemalloc.Filter(False, tracemalloc.__file__),
                tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
                tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
            )
        )
        frames = tracemalloc.get_traceback_limit()
        out: dict[str, Any] = {
            "traced_mb": round(sum(s.size for s in snapshot.statistics("filename")) / MB, 1)
        }
        for label, base in (
            ("since_first", self.first_snapshot),
            ("since_last", self.last_snapshot),
        ):
            if base is None:
                continue
            for key in ("lineno", "traceback"):
                stats = snapshot.compare_to(base, key)
                stats.sort(key=lambda s: s.size_diff, reverse=True)
                out[f"{label}_by_{key}"] = [
                    {
                        "kb": round(s.size_diff / 1024, 1),
                        "count": s.count_diff,
                        "total_kb": round(s.size / 1024, 1),
                        "site": _site(s, frames if key == "traceback" else 1),
                    }
                    for s in stats[: self.top]
                ]
        if self.first_snapshot is None:
            self.first_snapshot = snapshot
        self.last_snapshot = snapshot
        return out
