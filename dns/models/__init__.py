"""Models by name. Adding one is a module here (imported below) and a file in conf/model/."""

from dns.models.registry import get_model, input_shape, layer_kind, list_models, prunable_layers, register_model
from dns.models import alexnet, lenet  # noqa: F401  (registers alexnet, lenet300, lenet5)

__all__ = ["get_model", "input_shape", "layer_kind", "list_models", "prunable_layers", "register_model"]
