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

from dns.baselines import GradualMagnitude, Han
from dns.export import load, save
from dns.sparse import SparseLinear, sparsify
from dns.surgeon import Surgeon

__all__ = ["GradualMagnitude", "Han", "SparseLinear", "Surgeon", "load", "save", "sparsify"]
