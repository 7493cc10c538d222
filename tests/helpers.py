import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cli_env(cache: Path | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    if cache is not None:
        env["WSSS_CACHE"] = str(cache)
    return env


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
