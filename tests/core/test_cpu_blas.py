"""MLX's CPU matmuls bound to OpenBLAS on Linux (lazarus.cpu_blas): on by default, same numbers."""

import json
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux CPU wheels only")

SCRIPT = """
import json, sys
import lazarus
from lazarus import cpu_blas
import mlx.core as mx
import numpy as np
from lazarus.models.create import create_checkpoint
from lazarus.loader import load_model
mx.random.seed(0)
a = mx.random.normal((96, 80)); b = mx.random.normal((80, 72))
model, tok, _ = load_model(sys.argv[1], dtype="float32")
logits = model(mx.array([[1, 2, 3, 4, 5]]))
print(json.dumps({"state": cpu_blas.state, "matmul": np.asarray(a @ b).tolist(),
                  "logits": np.asarray(logits).tolist()}))
"""


def _run(env_blas, checkpoint):
    import os

    env = dict(os.environ)
    env.pop("LAZARUS_BLAS", None)
    if env_blas:
        env["LAZARUS_BLAS"] = env_blas
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(checkpoint)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_openblas_is_bound_and_gives_the_reference_blas_numbers(tiny_checkpoint):
    pytest.importorskip("scipy_openblas32")
    fast = _run(None, tiny_checkpoint())
    slow = _run("reference", tiny_checkpoint())
    assert fast["state"]["blas"] == "openblas", fast["state"]
    assert slow["state"]["blas"] == "reference"
    np.testing.assert_allclose(fast["matmul"], slow["matmul"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fast["logits"], slow["logits"], rtol=1e-4, atol=1e-4)


def test_doctor_reports_the_blas_and_its_speed(lazarus_cli):
    result = lazarus_cli("doctor", "--json")
    report = json.loads(result.output)
    assert report["cpu_blas"]["blas"] in {"openblas", "reference"}
    assert report["cpu_blas"]["gflops_float32"] > 0


THREADS = """
import ctypes, json
from lazarus import cpu_blas
print(json.dumps(ctypes.CDLL(cpu_blas.state["library"]).scipy_openblas_get_num_threads()))
"""


@pytest.mark.parametrize("variable", ["PYTEST_XDIST_WORKER", "MLX_RANK"])
def test_processes_sharing_the_cores_get_one_blas_thread_each(variable):
    """pytest-xdist workers and mlx.launch ranks: OpenBLAS threads spinning on oversubscribed cores
    made a LoRA step several times slower, so each such process runs one BLAS thread."""
    import os

    pytest.importorskip("scipy_openblas32")
    env = {k: v for k, v in os.environ.items()
           if k not in ("LAZARUS_BLAS", "OPENBLAS_NUM_THREADS", "PYTEST_XDIST_WORKER", "MLX_RANK")}

    def threads(extra):
        out = subprocess.run([sys.executable, "-c", THREADS], env={**env, **extra}, check=True,
                             capture_output=True, text=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    assert threads({variable: "0"}) == 1
    assert threads({"OPENBLAS_NUM_THREADS": "2", variable: "0"}) == 2  # an explicit choice is kept
