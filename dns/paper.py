"""The published numbers our runs are compared with (Guo et al. 2016 and its peers).

Sources: the paper's Table 1 and layer-wise Tables 2-3, as gathered in ../shared/docs/paper-facts.md
(§1, §3, §3.3) and the best published LeNet results in peers-and-prior-art.md (§0, §5).
"""

# Table 1: errors are fractions; remaining and compression count weights and biases. A run is set beside a row
# when it has the row's model and dataset.
TABLE1 = {
    "lenet5": {"network": "LeNet-5", "dataset": "mnist", "reference_error": 0.0091, "error": 0.0091, "params": 431_080,
               "remaining": 4_000, "compression": 108.0, "iterations": (10_000, 16_000)},
    "lenet300": {"network": "LeNet-300-100", "dataset": "mnist", "reference_error": 0.0228, "error": 0.0199, "params": 266_610,
                 "remaining": 4_800, "compression": 56.0, "iterations": (10_000, 25_000)},
    # ILSVRC-2012 single-crop validation; the paper gives no top-5 error for the reference
    "alexnet": {"network": "AlexNet", "dataset": "imagenet", "reference_error": 0.4342, "error": 0.4309, "top5_error": 0.1999,
                "params": 60_965_224, "remaining": 3_450_000, "compression": 17.7,
                "iterations": (450_000, 700_000)},
}

# Tables 2-3: remaining % per layer after DNS.
LAYERS = {
    "lenet5": {"conv1": 14.2, "conv2": 3.1, "fc1": 0.7, "fc2": 4.3},
    "lenet300": {"fc1": 1.8, "fc2": 1.8, "fc3": 5.5},
    "alexnet": {"conv1": 53.8, "conv2": 40.6, "conv3": 29.0, "conv4": 32.3, "conv5": 32.5, "fc6": 3.7,
                "fc7": 6.6, "fc8": 4.6},
}

# Other published points, drawn on the error-compression plot: (label, error, compression).
OTHERS = {
    "lenet5": [("Han et al. 2015", 0.0077, 12.0), ("Sparse VD", 0.0075, 280.0)],
    "lenet300": [("Han et al. 2015", 0.0159, 12.0), ("Sparse VD", 0.0192, 68.0)],
    "alexnet": [("Han et al. 2015", 0.4277, 9.0)],
}
