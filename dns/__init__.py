"""Dynamic Network Surgery (Guo, Yao & Chen, NIPS 2016) for PyTorch: a library and an experiment runner.

    surgeon = dns.Surgeon(model, c=1.0)   # masks on every Conv2d/Linear, thresholds from the current weights
    for images, labels in loader:         # your own loop
        ...; loss.backward(); optimizer.step()
        surgeon.step()                    # the σ-gated mask update of one iteration
    print(surgeon.markdown())             # the per-layer table
    surgeon.remove()                      # W ⊙ T baked in: an ordinary model
    dns.save(model, "model.dns")          # the compact file; dns.load("model.dns", model=MyNet()) reads it
    dns.load("model.dns", model=MyNet(), sparse=True)  # fc layers as compressed rows: faster CPU inference

`dns-train` runs the paper's experiments with this same `Surgeon`. The baselines it is compared with take the same
model and loop: `dns.Han` (Han et al.'s prune and retrain) and `dns.GradualMagnitude` (Zhu & Gupta's GMP).
"""

import importlib

# Imported on first use (PEP 562), so that `import dns` and the console scripts start without loading torch.
_WHERE = {"GradualMagnitude": "dns.baselines", "Han": "dns.baselines", "load": "dns.export", "save": "dns.export",
          "SparseLinear": "dns.sparse", "sparsify": "dns.sparse", "Surgeon": "dns.surgeon"}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'dns' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
