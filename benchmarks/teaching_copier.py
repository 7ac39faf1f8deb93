"""The original teaching folder copier, kept as a benchmark peer.

    python benchmarks/teaching_copier.py SRC DST

What it keeps from the original: a Pool(3), one apply_async per file, and a 1024-byte
read/write loop over buffered open() files. What it adds, only so that its copies pass the same
verification as every other tool in the benchmark (and the comparison is of equal work):
  - it recurses into subdirectories (the original copied one flat folder);
  - symlinks are recreated as symlinks (the original would open() them and fail on dangling ones);
  - mode and atime/mtime are copied (shutil.copystat) for files, and for directories after the pool
    has finished, bottom-up, so a directory's mtime is not disturbed by files created in it;
  - a failed file is counted through error_callback and makes the exit code 1 (the original's
    apply_async dropped exceptions silently).
"""

from __future__ import annotations

import os
import shutil
import sys
from multiprocessing import Pool

BUFFER_BYTES = 1024  # the original's read size: what `pcopy --buffer-size 1024` reproduces
POOL_SIZE = 3  # the original's Pool(3), whatever the machine


def copy_file(src: str, dst: str) -> None:
    with open(src, "rb") as fr, open(dst, "wb") as fw:
        while True:
            data = fr.read(BUFFER_BYTES)
            if not data:
                break
            fw.write(data)
    shutil.copystat(src, dst)


def main() -> int:
    if len(sys.argv) != 3:
        print("usage: teaching_copier.py SRC DST", file=sys.stderr)
        return 2
    src_root, dst_root = sys.argv[1], sys.argv[2]
    errors: list[BaseException] = []
    dirs: list[tuple[str, str]] = []
    pool = Pool(POOL_SIZE)
    # Top-down walk: a directory exists before its files are handed to the pool.
    for dirpath, dirnames, filenames in os.walk(src_root):
        rel = os.path.relpath(dirpath, src_root)
        dst_dir = os.path.normpath(os.path.join(dst_root, rel))
        os.makedirs(dst_dir, exist_ok=True)
        dirs.append((dirpath, dst_dir))
        for name in dirnames + filenames:
            src = os.path.join(dirpath, name)
            dst = os.path.join(dst_dir, name)
            if os.path.islink(src):
                # os.walk lists a symlink to a directory among dirnames but does not enter it.
                os.symlink(os.readlink(src), dst)
            elif name in filenames:
                pool.apply_async(copy_file, (src, dst), error_callback=errors.append)
    pool.close()
    pool.join()
    for src, dst in reversed(dirs):
        shutil.copystat(src, dst)
    for exc in errors:
        print(f"teaching_copier: {exc}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
