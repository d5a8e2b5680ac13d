"""Models by name. Adding one is a module here (imported below) and a file in conf/model/."""

from dns.models.registry import (get_model, input_error, input_shape, layer_kind, list_models, prunable_layers,
                                 register_model)
# importing a model's module registers its builders: alexnet; lenet300, lenet5; resnet20, resnet32, resnet44,
# resnet56, resnet110; torchvision (any classifier of torchvision.models)
from dns.models import alexnet, lenet, resnet_cifar, torchvision_models  # noqa: F401

__all__ = ["get_model", "input_error", "input_shape", "layer_kind", "list_models", "prunable_layers",
           "register_model"]
