# Train in Python, run in C++ (docs/python.md; the ctest docs.python_model).
#   python3 python_model.py train DIR   fits a ridge regression with numpy and
#                                       saves it with joblib.dump
#   python3 python_model.py check DIR   checks what the C++ program wrote back
import os
import sys

try:
    import joblib
    import numpy as np
except ImportError as e:  # the test command installs python3-joblib
    print(f"skipped: {e}")
    sys.exit(77)

mode, d = sys.argv[1], sys.argv[2]
if mode == "train":
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    y = X @ np.array([1.5, -2.0, 0.5]) + 0.25 + rng.normal(scale=0.01, size=200)
    alpha = 0.1
    Xc, yc = X - X.mean(axis=0), y - y.mean()
    w = np.linalg.solve(Xc.T @ Xc + alpha * np.eye(3), Xc.T @ yc)
    b = y.mean() - X.mean(axis=0) @ w
    X_new = rng.normal(size=(5, 3))
    model = {
        "params": {"alpha": alpha, "fit_intercept": True},
        "weights": w.astype(np.float32),
        "bias": float(b),
        "features": ["x0", "x1", "x2"],
        "X_new": X_new,
        "expected": (X_new @ w + b),
    }
    joblib.dump(model, os.path.join(d, "model.joblib"), compress=3)
else:
    out = joblib.load(os.path.join(d, "predictions.joblib"))
    model = joblib.load(os.path.join(d, "model.joblib"))
    assert out["model"] == "ridge" and out["n"] == 5, out
    assert np.allclose(out["predictions"], model["expected"], atol=1e-5), (out["predictions"], model["expected"])
    print("python_model: Python read the C++ predictions")
