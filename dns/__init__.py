"""Dynamic Network Surgery (Guo, Yao & Chen, NIPS 2016) as a PyTorch experiment runner."""
