"""`python -m cli`: first a check that this Python is the project's environment, so that a
job started on another interpreter (a `ray start` outside `.venv`, say) says what to do
instead of failing on its first import."""

import importlib.util
import sys

NEEDED = ("typer", "omegaconf", "ray", "torch", "vllm", "deepspeed", "faiss")
missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
if missing:
    sys.stderr.write(
        f"error: {sys.executable} lacks the project's packages ({', '.join(missing)}).\n"
        "Run the project's Python: `make install` creates .venv; use .venv/bin/python, or\n"
        "`source .venv/bin/activate` first. Under `ray job submit`, the job runs the Python\n"
        "that `ray start` was started with: activate .venv before `ray start`.\n")
    sys.exit(2)

from cli.main import app  # noqa: E402

app()
