import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cli_env(cache: Path | None = None, prefect_api: str | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    if cache is not None:
        env["WSSS_CACHE"] = str(cache)
    if prefect_api is not None:
        env["PREFECT_API_URL"] = prefect_api
    return env


def start_prefect_server(home: Path, timeout: float = 180.0) -> tuple[subprocess.Popen | None, str | None]:
    """``prefect server start`` on a free local port with its database under ``home``, in its own process group:
    (process, API URL), or (None, None) when it does not answer within ``timeout`` seconds."""
    import time
    import urllib.request

    from pipeline.distributed import free_port
    from pipeline.orchestration import PREFECT_DEFAULTS
    url = f"http://127.0.0.1:{(port := free_port())}/api"
    env = {**PREFECT_DEFAULTS, **os.environ, "PREFECT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    with open(home / "server.log", "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                  stdout=log, stderr=subprocess.STDOUT, env=env, cwd=home, start_new_session=True)
    deadline = time.time() + timeout
    while time.time() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                if r.read() == b"true":
                    return server, url
        except OSError:
            time.sleep(0.5)
    stop_prefect_server(server)
    return None, None


def stop_prefect_server(server: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (the server and whatever it started), SIGKILL if it is still there after 30 s."""
    import signal
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def cli(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *map(str, args)], capture_output=True, text=True,
                          env=env or cli_env(), timeout=timeout, cwd=ROOT)


def config_value(cfg, dotted: str):
    """The value of a resolved config at a dotted key path (``"train_classifier.lr"``), a tuple as a list (as
    ``--show-config`` writes it), for tables of the official values."""
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return list(node) if isinstance(node, tuple) else node


def cli_here(*args, env=None, catch_exceptions: bool = True) -> subprocess.CompletedProcess:
    """``cli.py ARGS`` in this process (click's runner: the same command, its one-line errors and exit codes, without
    a fresh interpreter's seconds of imports), as ``cli`` returns it. For commands that stop before any stage; a
    flow that runs goes through ``cli``, the console path. ``catch_exceptions=False``: an unexpected exception
    propagates to the test (its traceback), as the console's ``--debug``."""
    from click.testing import CliRunner

    import cli as cli_module
    r = CliRunner().invoke(cli_module.main, [str(a) for a in args], env=env, catch_exceptions=catch_exceptions)
    return subprocess.CompletedProcess(["cli.py", *map(str, args)], r.exit_code, r.stdout, r.stderr)


def inspect_json(run_dir, env=None, in_process: bool = True) -> dict:
    """``cli.py inspect RUN_DIR --json``, parsed. In this process by default (click's runner calls the same command
    as the console does, without the seconds of a fresh interpreter's imports); ``in_process=False`` runs the real
    ``cli.py`` (the session's first run does, so the console path is exercised too)."""
    run = cli_here if in_process else cli
    r = run("inspect", run_dir, "--json", env=env, **({"catch_exceptions": False} if in_process else {}))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def statuses(info: dict) -> dict:
    return {s["name"]: s["status"] for s in info["stages"]}
