"""The entry of a worker process started as a new interpreter (`python -m pgmux.runtime.workerstart`,
runtime/workerproc.py): its place in the pooler from the environment, then runtime/main.worker_run."""

from __future__ import annotations

import json
import os
import sys

from pgmux.runtime.main import worker_run
from pgmux.runtime.workerproc import ENV

if __name__ == "__main__":
    sys.exit(worker_run(json.loads(os.environ.pop(ENV))))
