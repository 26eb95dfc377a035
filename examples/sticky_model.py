"""Sticky model session: a real (small) model loaded once per worker, then many predictions.

The model is a numpy linear regression trained when a worker first needs it (``Depends``), so
every later activity on that worker reuses it. A sticky session pins ``load_model`` and all the
``predict`` calls after it to one worker: the output shows one pid and a load count of 1.

Run: python examples/sticky_model.py
"""

from __future__ import annotations

import os

import numpy as np

from pool import Pool
from sdk import Depends, activity

LOADS = 0  # per worker process: how many times this process trained the model


class LinearModel:
    """Least-squares linear regression, trained at load on synthetic data."""

    def __init__(self, n_features: int = 8, n_samples: int = 20_000, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.true_weights = rng.normal(size=n_features)
        x = rng.normal(size=(n_samples, n_features))
        y = x @ self.true_weights + 0.5 + rng.normal(scale=0.01, size=n_samples)
        design = np.hstack([x, np.ones((n_samples, 1))])
        solution, *_ = np.linalg.lstsq(design, y, rcond=None)
        self.weights, self.bias = solution[:-1], float(solution[-1])

    def predict(self, features: list[float]) -> float:
        return float(np.asarray(features) @ self.weights + self.bias)


def load_linear_model() -> LinearModel:
    """The Depends factory: runs once per worker process, on first use."""
    global LOADS
    LOADS += 1
    return LinearModel()


@activity(sticky_to_worker=True)
def load_model(model: LinearModel = Depends(load_linear_model)) -> dict:
    activity.session_state()["predictions"] = 0
    error = float(np.abs(model.weights - model.true_weights).max())
    return {
        "pid": os.getpid(),
        "loads": LOADS,
        "max_weight_error": round(error, 4),
    }


@activity(sticky_to_worker=True)
def predict(features: list[float], model: LinearModel = Depends(load_linear_model)) -> dict:
    state = activity.session_state()
    state["predictions"] += 1
    return {
        "pid": os.getpid(),
        "loads": LOADS,
        "n": state["predictions"],
        "y": model.predict(features),
    }


def main() -> None:
    rng = np.random.default_rng(1)
    with Pool([load_model, predict], workers=2) as pool:
        with pool.sticky_session() as session:
            loaded = session.run(load_model)
            print(
                f"load_model: pid {loaded['pid']}, loads {loaded['loads']}, "
                f"max weight error {loaded['max_weight_error']}"
            )
            results = [session.run(predict, rng.normal(size=8).tolist()) for _ in range(200)]
        pids = sorted({r["pid"] for r in results})
        loads = sorted({r["loads"] for r in results})
        print(
            f"predict x{len(results)}: pids {pids}, loads {loads}, "
            f"last n {results[-1]['n']}, y[0] {results[0]['y']:.3f}"
        )
        print(
            f"the model was trained once, in worker {loaded['pid']}, of workers "
            f"{sorted(pool.worker_pids())}"
        )


if __name__ == "__main__":  # workers re-import this file: keep the guard
    main()
