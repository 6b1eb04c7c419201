"""resources.rollout_cpu_set / learner_cpu_set: a role's process, its running threads and the
threads it starts later stay on the given cores."""

from __future__ import annotations

import subprocess
import sys

import pytest

from actors import pin_to_cpus

SCRIPT = """
import os, threading
from actors import pin_to_cpus
seen = {}
ready, done = threading.Event(), threading.Event()
def before():
    ready.set(); done.wait(); seen["before"] = os.sched_getaffinity(0)
t = threading.Thread(target=before); t.start(); ready.wait()
pin_to_cpus([0])
after = threading.Thread(target=lambda: seen.__setitem__("after", os.sched_getaffinity(0)))
after.start(); after.join(); done.set(); t.join()
print(sorted(os.sched_getaffinity(0)), sorted(seen["before"]), sorted(seen["after"]))
"""


def test_every_thread_is_pinned_to_the_set():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         check=True, cwd=str(__import__("pathlib").Path(__file__).parents[2]))
    assert out.stdout.split() == ["[0]"] * 3


def test_a_core_the_machine_lacks_is_a_clear_error():
    with pytest.raises(ValueError, match=r"cpu set \[4096\] is not within"):
        pin_to_cpus([4096])
    pin_to_cpus([])  # empty: nothing pinned
