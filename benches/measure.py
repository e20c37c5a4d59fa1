#!/usr/bin/env python3
"""Runs one command and prints `wall_s cpu_s peak_tree_rss_mib` on one line.

CPU is user+system of the command and every descendant it waited for. The
RSS is of the whole process tree (a pipeline's stages, Lethe's pg_dump
child), sampled every 20 ms and summed per sample: the peak is what the
machine must hold at once, not the largest single process.
Usage: benches/measure.py CMD [ARG...]
"""
import os
import resource
import subprocess
import sys
import time


def children_of():
    """ppid -> [pid] for every live process."""
    tree = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(pid))
    return tree


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_kib(root):
    tree, total, todo = children_of(), 0, [root]
    while todo:
        pid = todo.pop()
        total += rss_kib(pid)
        todo.extend(tree.get(pid, []))
    return total


def main():
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss_kib(proc.pid))
        time.sleep(0.02)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"{sys.argv[1:]} failed with status {proc.returncode}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"{wall:.3f} {cpu:.3f} {peak / 1024:.1f}")


if __name__ == "__main__":
    main()
