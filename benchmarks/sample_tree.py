"""Make a deterministic sample tree (seeded), or check that one tree is a faithful copy of another.

    python benchmarks/sample_tree.py DIR [--files N] [--dirs N] [--large N] [--large-mib M]
    python benchmarks/sample_tree.py --compare SRC DST

Used by `make demo` and by the benchmarks; the compare checks type, bytes, mode, mtime_ns and
symlink targets of every entry, and exits 1 naming the first differences.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import stat
import sys

MIB = 1024 * 1024


def lognormal_size(rng: random.Random, median: int = 4096, sigma: float = 1.2, cap: int = 4 * MIB) -> int:
    """Source-tree-like sizes: most files a few KiB, a long tail of larger ones."""
    return min(cap, int(rng.lognormvariate(0, sigma) * median))


def make_tree(root: str, files: int = 3000, dirs: int = 60, large: int = 4, large_mib: int = 64,
              seed: int = 1, symlinks: int = 20, empty_dirs: int = 5) -> None:
    """files small files spread over dirs directories, large files of large_mib MiB, a few
    symlinks and empty directories. The same arguments always give the same tree."""
    rng = random.Random(seed)
    os.makedirs(root, exist_ok=True)
    dir_paths = [root]
    for i in range(dirs):
        parent = rng.choice(dir_paths)
        path = os.path.join(parent, f"d{i:04d}")
        os.makedirs(path, exist_ok=True)
        dir_paths.append(path)
    block = rng.randbytes(1 << 20)
    for i in range(files):
        size = lognormal_size(rng)
        start = rng.randrange(0, len(block) - min(size, len(block)) + 1)
        data = (block * (size // len(block) + 1))[start:start + size] if size else b""
        with open(os.path.join(rng.choice(dir_paths), f"f{i:06d}.dat"), "wb") as fh:
            fh.write(data)
    for i in range(large):
        with open(os.path.join(root, f"large{i:02d}.bin"), "wb") as fh:
            chunk = rng.randbytes(MIB)
            for _ in range(large_mib):
                fh.write(chunk)
                chunk = chunk[1:] + chunk[:1]  # not all blocks equal: no dedup helps anyone
    for i in range(symlinks):
        link = os.path.join(rng.choice(dir_paths), f"link{i:03d}")
        if not os.path.lexists(link):
            os.symlink(f"../target-{i}", link)
    for i in range(empty_dirs):
        os.makedirs(os.path.join(root, f"empty{i}"), exist_ok=True)


def _digest(path: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while chunk := fh.read(MIB):
            h.update(chunk)
    return h.hexdigest()


def describe(root: str) -> dict[str, tuple[object, ...]]:
    """rel path -> (type, mode, mtime_ns, content digest or link target) for every entry."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", st.st_mode, st.st_mtime_ns)
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", st.st_mode, st.st_mtime_ns, st.st_size, _digest(path))
            else:
                out[rel] = ("special", st.st_mode, st.st_mtime_ns)
    return out


def describe_tree(root: os.PathLike[str] | str) -> dict[str, tuple[object, ...]]:
    """describe plus the root directory itself (its mode and mtime count too)."""
    out = describe(str(root))
    st = os.stat(root)
    out["."] = ("dir", st.st_mode, st.st_mtime_ns)
    return out


def compare(src: str, dst: str) -> list[str]:
    """Differences between two trees, as readable lines (empty: dst is a faithful copy)."""
    a, b = describe(src), describe(dst)
    problems = [f"missing in copy: {rel}" for rel in sorted(a.keys() - b.keys())]
    problems += [f"extra in copy: {rel}" for rel in sorted(b.keys() - a.keys())]
    problems += [f"differs: {rel}: {a[rel]} != {b[rel]}" for rel in sorted(a.keys() & b.keys())
                 if a[rel] != b[rel]]
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--compare", action="store_true", help="compare SRC and DST instead")
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--dirs", type=int, default=60)
    parser.add_argument("--large", type=int, default=4)
    parser.add_argument("--large-mib", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.compare:
        if len(args.paths) != 2:
            parser.error("--compare takes SRC and DST")
        problems = compare(*args.paths)
        for line in problems[:20]:
            print(line, file=sys.stderr)
        print(f"compare: {'OK, identical' if not problems else f'{len(problems)} differences'}"
              f" ({len(describe(args.paths[0]))} entries)")
        return 1 if problems else 0
    root = args.paths[0]
    if os.path.exists(root):
        print(f"sample tree: {root} exists, reusing it")
        return 0
    make_tree(root, args.files, args.dirs, args.large, args.large_mib, args.seed)
    print(f"sample tree: {root}: {args.files} small files, {args.large} x {args.large_mib} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
