"""HardLinks: the later names of a hard-linked source inode, made by the parent once all data is
in place (as a temporary link renamed over the name, like every other entry)."""

from __future__ import annotations

import os
import stat

from pcopy.backup import back_up
from pcopy.config import Config
from pcopy.interrupts import deferred
from pcopy.jobs import DST_SAME, STEP_LINK, CopyFailure, CopyOptions
from pcopy.metadata import temp_path
from pcopy.plan import HardLink
from pcopy.progress import ProgressSink
from pcopy.report import CopyReport
from pcopy.temps import ParentTemps
from pcopy.worker import judge_task, task_from_stat


class HardLinks:
    def __init__(self, config: Config, options: CopyOptions, report: CopyReport, progress: ProgressSink,
                 temps: ParentTemps) -> None:
        self.config = config
        self.options = options
        self.report = report
        self.progress = progress
        self.temps = temps

    def make_all(self, links: list[HardLink]) -> None:
        skipped = self.report.skipped
        for link in links:
            try:
                self.make(link)
            except OSError as exc:
                self.report.failures.append(CopyFailure.of(link.src, exc, STEP_LINK))
        self.progress.advance(0, len(links))  # processed, as workers count files
        self.progress.add_skipped(self.report.skipped - skipped, 0)

    def make(self, link: HardLink) -> None:
        dry_run = self.config.dry_run
        report = self.report
        try:
            first: os.stat_result | None = os.lstat(link.first_dst)
        except FileNotFoundError:
            if not dry_run:
                raise
            first = None  # a dry run did not copy it: the link would be made after it
        try:
            current: os.stat_result | None = os.lstat(link.dst)
        except FileNotFoundError:
            current = None
        if current is not None:
            if (first is not None and (current.st_dev, current.st_ino) == (first.st_dev, first.st_ino)
                    and (not dry_run or self.first_kept(link))):
                report.skipped += 1
                return
            if not self.config.replace_existing:
                report.skipped += 1
                return
            if stat.S_ISDIR(current.st_mode):
                raise IsADirectoryError(21, "cannot overwrite directory with non-directory", link.dst)
        if not dry_run:
            tmp = temp_path(link.dst)
            with deferred():
                os.link(link.first_dst, tmp)
                self.temps.add(tmp)
            try:
                if current is not None and self.options.backup:
                    back_up(link.dst, self.options)
                self.temps.renamed(tmp, link.dst)
            except OSError:
                self.temps.drop(tmp)
                raise
        if current is not None and self.options.backup:
            report.backed_up += 1
        report.count_file(link.dst, 0, current is not None, self.config.record_changes)

    def first_kept(self, link: HardLink) -> bool:
        """Dry run: whether the first name of link's inode stays as it is (a real run replaces
        it with a new inode when it is not up to date, and the link then differs from it).
        link.src shares that inode in SRC, so its stat judges first_dst as well."""
        task = task_from_stat(link.src, link.first_dst, os.lstat(link.src), True)
        return task is not None and judge_task(task, self.options) >= DST_SAME
