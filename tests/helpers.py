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


def inspect_json(run_dir, env=None) -> dict:
    r = cli("inspect", run_dir, "--json", env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def statuses(info: dict) -> dict:
    return {s["name"]: s["status"] for s in info["stages"]}
