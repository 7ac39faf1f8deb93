"""Helpers for the end-to-end tests: build real trees, snapshot them, compare them entry by entry.

Everything works on bytes paths, so names that are not UTF-8 (or hold newlines) are compared
byte-for-byte and never pass through a decoding step that could hide a difference.
"""

from __future__ import annotations

import hashlib
import os
import random
import stat
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Union

PathArg = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]

# Temporary names pcopy writes next to their final name: ".NAME.pcopy-XXXXXXXX".
TEMP_MARKER = b".pcopy-"

# Times stamped on built trees. The mtime is in the past with a nanosecond part, so a copy that
# does not preserve it (or rounds to microseconds) shows. The atime is in the future: the root
# file system is mounted relatime, which bumps atime on a read when atime <= mtime/ctime or is
# a day old; a future atime is never bumped, so reading SRC (by pcopy or by a snapshot) cannot
# change it and atime can be compared exactly.
_MTIME_BASE_NS = 1_600_000_000_123_456_789
_ATIME_AHEAD_NS = 3 * 3600 * 1_000_000_000


def fs(path: PathArg) -> bytes:
    return os.fsencode(os.fspath(path))


def is_temp_name(name: bytes) -> bool:
    return name.startswith(b".") and TEMP_MARKER in name


@dataclass(frozen=True)
class Node:
    """One entry of a snapshot: what `ls -l --full-time` plus a checksum would show."""

    kind: str  # file, dir, symlink, fifo, chr, blk, sock
    mode: int  # full st_mode
    size: int
    digest: str | None  # sha256 of the bytes, files only
    target: bytes | None  # symlinks: readlink(), byte-exact
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    dev: int
    ino: int
    nlink: int
    rdev: int
    blocks: int


Snapshot = dict[bytes, Node]  # rel path (bytes, b"" for the root) -> Node


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISREG, "file"), (stat.S_ISDIR, "dir"), (stat.S_ISLNK, "symlink"),
                       (stat.S_ISFIFO, "fifo"), (stat.S_ISCHR, "chr"), (stat.S_ISBLK, "blk"),
                       (stat.S_ISSOCK, "sock")):
        if test(mode):
            return name
    return "other"


def digest_file(path: bytes) -> str:
    h = hashlib.sha256()
    # O_NONBLOCK is harmless for regular files and keeps a mistaken FIFO from hanging the test.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        while True:
            block = os.read(fd, 1 << 20)
            if not block:
                break
            h.update(block)
    finally:
        os.close(fd)
    return h.hexdigest()


def node(path: PathArg) -> Node:
    """lstat one path (stat before reading, so reading cannot disturb the recorded times)."""
    p = fs(path)
    st = os.lstat(p)
    kind = _kind(st.st_mode)
    return Node(
        kind=kind, mode=st.st_mode, size=st.st_size,
        digest=digest_file(p) if kind == "file" else None,
        target=os.readlink(p) if kind == "symlink" else None,
        uid=st.st_uid, gid=st.st_gid, atime_ns=st.st_atime_ns, mtime_ns=st.st_mtime_ns,
        dev=st.st_dev, ino=st.st_ino, nlink=st.st_nlink, rdev=st.st_rdev, blocks=st.st_blocks,
    )


def snapshot(root: PathArg) -> Snapshot:
    """Every entry under root (root included as b""), symlinks not followed."""
    top = fs(root)
    snap: Snapshot = {b"": node(top)}
    if snap[b""].kind != "dir":
        return snap
    stack = [b""]
    while stack:
        rel = stack.pop()
        base = os.path.join(top, rel) if rel else top
        for name in sorted(os.listdir(base)):
            child = os.path.join(rel, name) if rel else name
            snap[child] = node(os.path.join(top, child))
            if snap[child].kind == "dir":
                stack.append(child)
    return snap


def hard_link_groups(snap: Snapshot, within: Iterable[bytes] | None = None) -> set[frozenset[bytes]]:
    """Names that share an inode, as groups of two or more rel paths (only among `within`)."""
    names = set(snap) if within is None else set(within)
    by_inode: dict[tuple[int, int], set[bytes]] = {}
    for rel, n in snap.items():
        if rel in names and n.kind != "dir":
            by_inode.setdefault((n.dev, n.ino), set()).add(rel)
    return {frozenset(g) for g in by_inode.values() if len(g) > 1}


def compare(src: Snapshot, dst: Snapshot, *, times: bool = True, atime: bool = True,
            owner: bool | None = None, dst_extra: Iterable[bytes] = (),
            skip: Iterable[bytes] = ()) -> list[str]:
    """Differences between a SRC and a DST snapshot, as readable lines (empty: same tree).

    Compared per entry: type, mode (all 12 permission bits), bytes, symlink target bytes, size,
    device numbers, and (times) mtime_ns / atime_ns of everything but symlinks (the contract
    promises times for files and directories). owner None means "when running as root".
    Across the tree: hard-link groups of SRC are hard-link groups of DST, and no DST inode is
    a SRC inode. dst_extra names entries DST may hold that SRC lacks (merges); skip names SRC
    entries that are expected to be missing from DST (failures).
    """
    if owner is None:
        owner = os.geteuid() == 0
    extra = set(dst_extra)
    skipped = set(skip)
    problems: list[str] = []
    expected = set(src) - skipped
    for rel in sorted(expected - set(dst)):
        problems.append(f"missing in DST: {rel!r}")
    for rel in sorted(set(dst) - set(src) - extra):
        problems.append(f"unexpected in DST: {rel!r} ({dst[rel].kind})")
    for rel in sorted(expected & set(dst)):
        s, d = src[rel], dst[rel]
        where = f"{rel!r}"
        if s.kind != d.kind:
            problems.append(f"{where}: type {s.kind} -> {d.kind}")
            continue
        if s.kind != "symlink" and stat.S_IMODE(s.mode) != stat.S_IMODE(d.mode):
            problems.append(f"{where}: mode {stat.S_IMODE(s.mode):o} -> {stat.S_IMODE(d.mode):o}")
        if s.kind == "file" and (s.size, s.digest) != (d.size, d.digest):
            problems.append(f"{where}: content differs (size {s.size} -> {d.size})")
        if s.kind == "symlink" and s.target != d.target:
            problems.append(f"{where}: link target {s.target!r} -> {d.target!r}")
        if s.kind in ("chr", "blk") and s.rdev != d.rdev:
            problems.append(f"{where}: device {s.rdev} -> {d.rdev}")
        if owner and (s.uid, s.gid) != (d.uid, d.gid):
            problems.append(f"{where}: owner {s.uid}:{s.gid} -> {d.uid}:{d.gid}")
        if times and s.kind != "symlink":
            if s.mtime_ns != d.mtime_ns:
                problems.append(f"{where}: mtime_ns {s.mtime_ns} -> {d.mtime_ns}")
            if atime and s.atime_ns != d.atime_ns:
                problems.append(f"{where}: atime_ns {s.atime_ns} -> {d.atime_ns}")
    common = expected & set(dst)
    src_groups = hard_link_groups(src, common)
    dst_groups = hard_link_groups(dst, common)
    for group in sorted(src_groups - dst_groups, key=sorted):
        problems.append(f"hard-link group not kept: {sorted(group)!r}")
    for group in sorted(dst_groups - src_groups, key=sorted):
        problems.append(f"names share an inode in DST but not in SRC: {sorted(group)!r}")
    src_inodes = {(n.dev, n.ino) for n in src.values()}
    for rel, n in sorted(dst.items()):
        if (n.dev, n.ino) in src_inodes:
            problems.append(f"{rel!r}: DST inode is a SRC inode")
    return problems


def assert_same_tree(src: PathArg | Snapshot, dst: PathArg | Snapshot, **kwargs: object) -> None:
    """Assert DST is an exact copy of SRC (see compare for what is compared)."""
    s = src if isinstance(src, dict) else snapshot(src)
    d = dst if isinstance(dst, dict) else snapshot(dst)
    problems = compare(s, d, **kwargs)  # type: ignore[arg-type]
    assert not problems, "trees differ:\n  " + "\n  ".join(problems[:40])


def temp_leftovers(root: PathArg) -> list[bytes]:
    """Paths of pcopy temporary files anywhere under root."""
    found = []
    for dirpath, dirnames, filenames in os.walk(fs(root)):
        for name in dirnames + filenames:
            if is_temp_name(name):
                found.append(os.path.join(dirpath, name))
    return found


# -- building trees ------------------------------------------------------------------------------

def write(path: PathArg, data: bytes, mode: int | None = None) -> bytes:
    p = fs(path)
    parent = os.path.dirname(p)
    if parent:
        os.makedirs(parent, exist_ok=True)
    with open(p, "wb") as f:
        f.write(data)
    if mode is not None:
        os.chmod(p, mode)
    return p


def random_bytes(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(n)


def stamp_times(root: PathArg, seed: int = 0) -> None:
    """Give every entry under root (root included) its own atime/mtime with a nanosecond part,
    bottom-up so setting a child's times cannot disturb its parent's afterwards."""
    top = fs(root)
    now = time.time_ns()
    k = seed * 1000
    entries: list[bytes] = []
    if not os.path.isdir(top) or os.path.islink(top):
        entries.append(top)  # os.walk yields nothing for a file
    for dirpath, dirnames, filenames in os.walk(top, topdown=False):
        entries.extend(os.path.join(dirpath, n) for n in filenames)
        # os.walk lists symlinks to directories among dirnames; they are not walked into.
        entries.extend(os.path.join(dirpath, n) for n in dirnames
                       if os.path.islink(os.path.join(dirpath, n)))
        entries.append(dirpath)
    for path in entries:
        k += 1
        mtime = _MTIME_BASE_NS - k * 7_919_000_000_000 + k * 1_013
        atime = now + _ATIME_AHEAD_NS + k * 104_729
        os.utime(path, ns=(atime, mtime), follow_symlinks=False)


def build_sample_tree(root: PathArg, *, seed: int = 1, outside: PathArg | None = None,
                      specials: bool = False) -> bytes:
    """A small tree with something of everything the contract names.

    - nested directories, an empty directory, an empty file, small files and files of 10-100 KiB
      (so --chunk-size 4K really splits them into byte ranges);
    - mode bits 0600/0644/0755/0444, setuid, setgid, a sticky 1777 directory, a setgid directory,
      a read-only 0555 directory with contents;
    - symlinks: relative, absolute (to `outside` if given), dangling, to a directory, and one
      whose target holds bytes that are not UTF-8;
    - a hard-link group of three names across directories (one of them large, so split) and a
      second group of two;
    - with specials: a FIFO (pcopy must never open it).
    Times are stamped last (see stamp_times).
    """
    top = fs(root)
    rng = random.Random(seed)
    os.makedirs(top, exist_ok=True)
    write(os.path.join(top, b"empty.txt"), b"")
    write(os.path.join(top, b"small.txt"), b"hello, world\n", 0o644)
    write(os.path.join(top, b"private.bin"), random_bytes(rng, 777), 0o600)
    write(os.path.join(top, b"tool.sh"), b"#!/bin/sh\necho hi\n", 0o755)
    write(os.path.join(top, b"readonly.txt"), b"read only\n", 0o444)
    write(os.path.join(top, b"setuid"), random_bytes(rng, 100), 0o4755)
    write(os.path.join(top, b"setgid"), random_bytes(rng, 100), 0o2750)
    os.makedirs(os.path.join(top, b"empty_dir"))
    for i, size in enumerate((10 * 1024, 10 * 1024 + 1, 33 * 1024 + 17, 64 * 1024, 100 * 1024)):
        write(os.path.join(top, b"big", b"b%d.dat" % i), random_bytes(rng, size))
    deep = os.path.join(top, b"a", b"b", b"c")
    os.makedirs(deep)
    for i in range(6):
        write(os.path.join(deep, b"f%d" % i), random_bytes(rng, rng.randrange(0, 3000)))
    write(os.path.join(top, b"a", b"mid.txt"), b"middle\n")
    sticky = os.path.join(top, b"sticky")
    write(os.path.join(sticky, b"inside"), b"x")
    os.chmod(sticky, 0o1777)
    sgid = os.path.join(top, b"sgid_dir")
    write(os.path.join(sgid, b"inside"), b"y")
    os.chmod(sgid, 0o2775)
    # Hard links: a large one (split into ranges at small chunk sizes) with three names.
    hl = write(os.path.join(top, b"links", b"h1"), random_bytes(rng, 50 * 1024 + 3))
    os.link(hl, os.path.join(top, b"links", b"h2"))
    os.link(hl, os.path.join(top, b"a", b"b", b"h3"))
    hs = write(os.path.join(top, b"links", b"s1"), b"small linked\n")
    os.link(hs, os.path.join(top, b"s2"))
    # Symlinks, copied as symlinks with their target bytes unchanged.
    os.symlink(b"small.txt", os.path.join(top, b"rel_link"))
    os.symlink(b"../../small.txt", os.path.join(top, b"a", b"b", b"up_link"))
    os.symlink(fs(outside) if outside is not None else b"/etc/hostname", os.path.join(top, b"abs_link"))
    os.symlink(b"does/not/exist", os.path.join(top, b"dangling"))
    os.symlink(b"a/b", os.path.join(top, b"dir_link"))
    os.symlink(b"odd\xff\xfe target\nwith newline", os.path.join(top, b"odd_target"))
    if specials:
        os.mkfifo(os.path.join(top, b"fifo"), 0o640)
    # Read-only directory with contents, made read-only after filling it.
    ro = os.path.join(top, b"ro_dir")
    write(os.path.join(ro, b"inner.txt"), b"inner\n", 0o444)
    os.makedirs(os.path.join(ro, b"sub"))
    write(os.path.join(ro, b"sub", b"deeper"), random_bytes(rng, 20_000))
    os.chmod(os.path.join(ro, b"sub"), 0o555)
    os.chmod(ro, 0o555)
    stamp_times(top, seed)
    return top


def count_kinds(snap: Mapping[bytes, Node]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in snap.values():
        counts[n.kind] = counts.get(n.kind, 0) + 1
    return counts


def distinct_file_bytes(snap: Mapping[bytes, Node]) -> int:
    """Bytes of regular-file data in the tree, each inode counted once (hard links share it)."""
    seen: dict[tuple[int, int], int] = {}
    for n in snap.values():
        if n.kind == "file":
            seen[(n.dev, n.ino)] = n.size
    return sum(seen.values())
