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
    """``prefect server start`` on a free local port with its database under ``home``: (process, API URL), or
    (None, None) when it does not answer within ``timeout`` seconds (the flows then start their temporary ones)."""
    import socket
    import time
    import urllib.request

    from pipeline.orchestration import PREFECT_DEFAULTS
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**PREFECT_DEFAULTS, **os.environ, "PREFECT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              stdout=open(home / "server.log", "w"), stderr=subprocess.STDOUT, env=env, cwd=home)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.time() + timeout
    while time.time() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                if r.status == 200:
                    return server, url
        except OSError:
            time.sleep(0.5)
    server.kill()
    return None, None


def cli(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *map(str, args)], capture_output=True, text=True,
                          env=env or cli_env(), timeout=timeout, cwd=ROOT)


def inspect_json(run_dir, env=None, in_process: bool = True) -> dict:
    """``cli.py inspect RUN_DIR --json``, parsed. In this process by default (click's runner calls the same command
    as the console does, without the seconds of a fresh interpreter's imports); ``in_process=False`` runs the real
    ``cli.py`` (the session's first run does, so the console path is exercised too)."""
    if not in_process:
        r = cli("inspect", run_dir, "--json", env=env)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)
    from click.testing import CliRunner

    import cli as cli_module
    r = CliRunner().invoke(cli_module.main, ["inspect", str(run_dir), "--json"], env=env, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def statuses(info: dict) -> dict:
    return {s["name"]: s["status"] for s in info["stages"]}
