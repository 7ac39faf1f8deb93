"""pcopy.lookupstat: a stat of a name that takes the attributes its LOOKUP returned (statx with
AT_STATX_DONT_SYNC), used on FUSE mounts that cache no names. It must give what os.stat gives,
field by field, raise as os.stat raises, cost one request on such a mount where os.stat costs
two, and the parent's probe must pass such mounts only: not local ones, not one that caches
names (where the re-run would miss a change made through the mount)."""

from __future__ import annotations

import os
import socket
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import pc_json, slowfs

from pcopy import lookupstat

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="statx is Linux's")

FIELDS = ("st_mode", "st_ino", "st_dev", "st_nlink", "st_uid", "st_gid", "st_size", "st_atime", "st_mtime",
          "st_ctime", "st_atime_ns", "st_mtime_ns", "st_ctime_ns", "st_blksize", "st_blocks", "st_rdev")


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """statx loaded, as in a run that probes a slow side."""
    loaded = lookupstat._load()
    if loaded is None:
        pytest.skip("no statx in this C library")
    monkeypatch.setattr(lookupstat, "_api", loaded)
    monkeypatch.setattr(lookupstat, "_api_loaded", True)
    yield


def assert_same_stat(got: os.stat_result, want: os.stat_result, *, atime: bool = True) -> None:
    for field in FIELDS:
        if atime or "atime" not in field:
            assert getattr(got, field) == getattr(want, field), field
    if atime:
        assert tuple(got) == tuple(want)


def test_every_kind_of_entry_stats_as_os_stat_does(api: None, tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x" * 5000)
    os.utime(tmp_path / "file", ns=(1_234_567_891_123_456_789, 987_654_321_987_654_321))
    (tmp_path / "dir").mkdir(mode=0o750)
    os.symlink("file", tmp_path / "link")
    os.symlink("missing", tmp_path / "dangling")
    os.mkfifo(tmp_path / "fifo", 0o640)
    os.link(tmp_path / "file", tmp_path / "hard")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    dev = os.open("/dev", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for where, name in [(fd, n) for n in ("file", "dir", "link", "dangling", "fifo", "hard", "sock")] + [
                (dev, "null"), (dev, "zero")]:
            for follow in (False, True):
                if follow and name == "dangling":
                    continue
                assert_same_stat(lookupstat.stat_at(name, dir_fd=where, follow_symlinks=follow),
                                 os.stat(name, dir_fd=where, follow_symlinks=follow))
        assert stat.S_ISCHR(lookupstat.stat_at("null", dir_fd=dev, follow_symlinks=False).st_mode)
        assert lookupstat.stat_at("null", dir_fd=dev, follow_symlinks=False).st_rdev == os.makedev(1, 3)
        assert lookupstat.stat_at("file", dir_fd=fd, follow_symlinks=False).st_mtime_ns == 987_654_321_987_654_321
    finally:
        os.close(fd)
        os.close(dev)
        sock.close()


def test_failures_raise_as_os_stat_does(api: None, tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    os.symlink("missing", tmp_path / "dangling")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name, follow, kind in [("nothing", False, FileNotFoundError), ("file/x", False, NotADirectoryError),
                                   ("dangling", True, FileNotFoundError)]:
            with pytest.raises(kind) as caught:
                lookupstat.stat_at(name, dir_fd=fd, follow_symlinks=follow)
            assert caught.value.filename == name
            with pytest.raises(kind):
                os.stat(name, dir_fd=fd, follow_symlinks=follow)
    finally:
        os.close(fd)


def test_the_mount_table_tells_fuse_mounts(tmp_path: Path) -> None:
    table = tmp_path / "mountinfo"
    table.write_text(
        "22 1 0:21 / /proc rw,nosuid - proc proc rw\n"
        "29 22 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        "40 29 0:35 / /mnt/ssh rw,nosuid,nodev shared:20 master:3 - fuse.sshfs me@host:/ rw,user_id=0\n"
        "41 29 0:36 / /mnt/plain rw - fuse DelayFS rw\n"
        "42 29 8:17 / /mnt/ntfs rw - fuseblk /dev/sdb1 rw\n"
        "43 29 0:37 / /mnt/nfs rw - nfs4 server:/x rw\n"
        "44 29 0:38 / /sys/fs/fuse/connections rw - fusectl fusectl rw\n"
        "a line that is not a mount\n"
        "45 29 0:39 / /mnt/vm rw - virtiofs share rw\n")
    assert lookupstat.read_mounts(str(table)) == {
        os.makedev(0, 21): False, os.makedev(8, 1): False, os.makedev(0, 35): True, os.makedev(0, 36): True,
        os.makedev(8, 17): True, os.makedev(0, 37): False, os.makedev(0, 38): False, os.makedev(0, 39): True}
    assert lookupstat.read_mounts(str(tmp_path / "absent")) == {}


def test_a_local_directory_is_not_among_the_probed_devices(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    assert lookupstat.lookup_devs([(str(tmp_path), 0.0), (str(tmp_path / "missing"), 0.0)]) == ()
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        dev = os.fstat(fd).st_dev
        assert (lookupstat.quick_in(fd, ()), lookupstat.quick_in(fd, (dev,)), lookupstat.quick_in(None, (dev,))) \
            == (False, lookupstat._load() is not None, False)
    finally:
        os.close(fd)


@pytest.mark.parametrize("cache_s", [0.0, 30.0])
def test_only_a_fuse_mount_that_caches_no_names_is_probed_in(
        tmp_path_factory: pytest.TempPathFactory, cache_s: float) -> None:
    """Where names stay valid (cache_s), the attributes the kernel holds can be older than a
    plain stat's: the probe must leave such a mount out."""
    with slowfs(tmp_path_factory, "lookup-probe", 1.0, cache_s=cache_s) as mount:
        (mount.backing / "d").mkdir()
        (mount.backing / "d" / "f").write_bytes(b"")
        (mount.backing / "empty").mkdir()
        where = str(mount.mountpoint / "d")
        devs = lookupstat.lookup_devs([(where, 1e-3), (str(mount.mountpoint / "empty"), 1e-3)])
        assert devs == ((os.stat(where).st_dev,) if cache_s == 0 else ())
        # The mount's root (its name is its parent's): a name listed in it is probed instead.
        # A file is not probed (a file's copy stats no names).
        assert lookupstat.lookup_devs([(str(mount.mountpoint), 1e-3)]) == devs
        assert lookupstat.lookup_devs([(where + "/f", 1e-3)]) == ()
        # Nor a mount whose round trip is too short to tell from a cache hit's call.
        assert lookupstat.lookup_devs([(where, lookupstat.PROBE_FROM_S / 2)]) == ()


def test_on_a_fuse_mount_one_request_where_os_stat_makes_two(tmp_path_factory: pytest.TempPathFactory) -> None:
    with slowfs(tmp_path_factory, "lookupstat", 0.0) as mount:
        root = mount.backing / "d"
        root.mkdir()
        for i in range(20):
            (root / f"f{i}").write_bytes(b"y" * i)
        os.symlink("f1", root / "link")
        fd = os.open(mount.mountpoint / "d", os.O_RDONLY | os.O_DIRECTORY)
        try:
            names = sorted(os.listdir(root))
            mount.reset()
            plain = [os.stat(name, dir_fd=fd, follow_symlinks=False) for name in names]
            plain_ops = mount.counters()["ops"]
            mount.reset()
            quick = [lookupstat.stat_at(name, dir_fd=fd, follow_symlinks=False) for name in names]
            quick_ops = mount.counters()["ops"]
        finally:
            os.close(fd)
    for got, want in zip(quick, plain, strict=True):
        assert_same_stat(got, want, atime=False)
    asked = {op: n for op, n in plain_ops.items() if n}
    assert asked.get("LOOKUP") == len(names) and asked.get("GETATTR", 0) >= len(names), asked
    assert quick_ops.get("LOOKUP") == len(names), quick_ops
    assert sum(quick_ops.values()) == sum(plain_ops.values()) - len(names), (quick_ops, plain_ops)


def test_a_change_made_through_a_caching_mount_is_seen_by_the_next_run(
        tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    """On a mount that caches names, the attributes the kernel holds for a file changed through
    it are stale until a GETATTR: a quick check on them skipped the changed file (measured with
    the probe forced to pass this mount: 0 copied, DST left differing). The probe leaves such a
    mount out, so the re-run copies it again."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        (src / f"f{i}").write_bytes(b"a" * 100)
    with slowfs(tmp_path_factory, "lookup-cached", 1.0, cache_s=30.0) as mount:
        dst = mount.mountpoint / "dst"
        first = pc_json(src, dst, "-j", "2")
        assert first["files"] == 5
        os.stat(dst / "f2")  # (the kernel holds its attributes)
        with open(dst / "f2", "r+b") as changed:
            changed.write(b"b" * 100)  # same size, a new mtime
        again = pc_json(src, dst, "-j", "2")
        assert (again["files"], again["skipped"]) == (1, 4)
        assert (dst / "f2").read_bytes() == b"a" * 100


@pytest.mark.parametrize(("samples", "passes"), [
    ("SS", True),  # a LOOKUP each tick: names are not cached
    ("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF", False),  # never a request: cached
    ("SFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF", False),  # one slow call (preempted) is not enough
    ("FFSFFS", True),  # a tick may take a few polls to pass
])
def test_the_probe_needs_two_round_trips_a_tick_apart(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, samples: str, passes: bool) -> None:
    """lookup_devs' decision, with the timed stats scripted (S: took a round trip, F: did not)
    and one kernel tick made 5 ms."""
    opened: list[int] = []

    def candidate(directory: str, fuse: object) -> tuple[int, int, bytes]:
        opened.append(os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY))
        return 7, opened[-1], b"x"

    script = iter(samples)
    monkeypatch.setattr(lookupstat, "_load_api", lambda: True)
    monkeypatch.setattr(lookupstat, "_candidate", candidate)
    monkeypatch.setattr(lookupstat, "_timed", lambda dir_fd, name: 1.0 if next(script, "F") == "S" else 0.0)
    monkeypatch.setattr(lookupstat, "_TICK_S", 0.005)
    # Two directories on one mount (SRC and DST): probed once, its answer given once.
    assert lookupstat.lookup_devs([(str(tmp_path), 1e-3), (str(tmp_path / "same-mount"), 1e-3)]) == (
        (7,) if passes else ())
    assert len(opened) == 2
    for fd in opened:
        with pytest.raises(OSError):
            os.fstat(fd)  # (closed by the probe)


def test_a_probe_that_cannot_decide_ends(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    monkeypatch.setattr(lookupstat, "_load_api", lambda: True)
    monkeypatch.setattr(lookupstat, "_candidate", lambda directory, fuse: (7, fd, b"x"))
    monkeypatch.setattr(lookupstat, "_timed", lambda dir_fd, name: 0.0)  # (cached, but no tick ever passes)
    monkeypatch.setattr(lookupstat, "_TICK_S", 3600.0)
    monkeypatch.setattr(lookupstat, "_PROBE_LIMIT_S", 0.05)
    assert lookupstat.lookup_devs([(str(tmp_path), 1e-3)]) == ()
