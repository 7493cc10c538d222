import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DO_NOT_TRACK", "1")
# The suite runs on two pytest-xdist workers (pyproject addopts: ``-n 2``): one OpenMP thread each, in the workers and in
# the cli.py processes they start (they inherit it). Two workers of two threads on two cores spin against each other;
# and the suite's tensors are small, where a second thread buys nothing. Set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    from pipeline.synthetic import make_synthetic
    return make_synthetic(tmp_path_factory.mktemp("synth"), n_train=12, n_val=4, seed=3, min_size=64, max_size=96)


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """One Prefect server for the session's flow runs, its URL (``None`` if it did not start).

    Without one, every ``cli.py run-flow`` starts and stops Prefect's temporary local server: 13–15 s of a flow
    test's time on an idle 2-core machine (more on a loaded one), over some 70 flow runs. The calls that do not take the
    ``env`` fixture (the command-line tests) still use the temporary server, as a user's first run does."""
    from tests.helpers import start_prefect_server, stop_prefect_server
    server, url = start_prefect_server(tmp_path_factory.mktemp("prefect"))
    yield url  # None: the flows start their temporary servers
    if server is not None:
        stop_prefect_server(server)


@pytest.fixture(scope="session")
def env(tmp_path_factory, prefect_api) -> dict:
    """The environment of the flow tests' ``cli.py`` calls (one synthetic-data cache and one Prefect server for the session)."""
    from tests.helpers import cli_env
    return cli_env(tmp_path_factory.mktemp("cache"), prefect_api)


@pytest.fixture(scope="session")
def cam_run(tmp_path_factory, env):
    """The smoke ``cam_voc`` run, made once per session: (run folder, seconds, ``inspect --json`` right after)."""
    import time

    from tests.helpers import cli, inspect_json
    run_dir = tmp_path_factory.mktemp("cam") / "run"
    t0 = time.time()
    r = cli("run-flow", "cam_voc", "--profile", "smoke", "--run-dir", run_dir, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    seconds = time.time() - t0
    return run_dir, seconds, inspect_json(run_dir, env, in_process=False)  # the summary before later tests change this run
