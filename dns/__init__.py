"""Dynamic Network Surgery (Guo, Yao & Chen, NIPS 2016) as a PyTorch experiment runner."""


def load(path):
    """A plain PyTorch model from a compact `.dns` file (see dns.export and docs/format.md)."""
    from dns.export import load as load_dns

    return load_dns(path)
