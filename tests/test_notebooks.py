"""Every lesson notebook runs top to bottom (`nbdev-test`, as `make nbtest` runs it), inside the pytest run.

`make test` used to run `nbdev-test --n-workers 2` and then pytest, one after the other: each ended with one of its
two workers idle while the other finished its last long item. Run here, on one pytest-xdist worker (sorted first by
`conftest.py`), the notebooks share the two cores with the other tests and neither run has an idle tail."""
import os, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_every_notebook_runs_top_to_bottom():
    nbdev_test = Path(sys.executable).with_name("nbdev-test")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg")
    r = subprocess.run([str(nbdev_test), "--n-workers", "1", "--timing"], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    print(r.stdout[-3000:])
    assert r.returncode == 0, f"nbdev-test failed (status {r.returncode}):\n{r.stdout[-6000:]}\n{r.stderr[-6000:]}"
    assert "Success." in r.stdout + r.stderr
