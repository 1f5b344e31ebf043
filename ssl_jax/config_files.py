"""Finding, loading and changing config files: the method -> config file map, `get_config(arg)` by path, and
`key=value` settings cast as on the command line. Light (ml_collections only), so the sweep and the command-line
checks use it without starting JAX."""
import importlib.util
import json
import os

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")

METHOD_CONFIGS = {  # method -> its CIFAR config, configs/<name>.py
    "simclr": "simclr_cifar",
    "byol": "byol_cifar",
    "vicreg": "vicreg_cifar",
    "tico": "tico_cifar",
    "vicreg_tico": "vicreg_tico_cifar",
    "barlow_twins": "barlow_cifar",
    "simsiam": "simsiam_cifar",
    "moco_v3": "mocov3_cifar",
    "dino": "dino_cifar",
    "swav": "swav_cifar",
    "nnclr": "nnclr_cifar",
    "moco_v2_plus": "mocov2plus_cifar",
    "mae": "mae_cifar",
}

# Every config the learning check runs (ssl_jax/learning_check.py): entry -> configs/<name>.py. Each method's own
# config under the method's name, and the configs that run a method on another backbone under names of their own
# (their config's `method` says which method). Not METHOD_CONFIGS: its keys are method names (the sweeps, the
# per-method tests).
CHECKED_CONFIGS = dict(METHOD_CONFIGS, dino_vit="dino_vit_cifar")

# The ImageNet recipes (issue 22): method -> configs/<name>.py, each with `:in100` (solo-learn's ImageNet-100
# recipe) and `:smoke` (any image folder, on the CPU) variants. Not in METHOD_CONFIGS or CHECKED_CONFIGS: those drive
# the CIFAR learning check and the sweeps.
IMAGENET_CONFIGS = {
    "byol": "byol_imagenet",
    "simclr": "simclr_imagenet",
    "moco_v3": "mocov3_imagenet",
    "barlow_twins": "barlow_imagenet",
    "dino": "dino_imagenet",            # ViT-S/16
    "swav": "swav_imagenet",
    "moco_v2_plus": "mocov2plus_imagenet",
}


def method_config_path(method):
    """configs/<file>.py of `method` (a key of METHOD_CONFIGS)."""
    return os.path.join(CONFIG_DIR, METHOD_CONFIGS[method] + ".py")


def load_config_file(path, arg=None):
    """The file's `get_config(arg)`, loaded by path as ml_collections' `--config` flag does."""
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(f"ssl_jax_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def load_config(name, arg=None):
    """configs/<name>.py's `get_config(arg)`, e.g. `load_config('byol_cifar', 'smoke')`."""
    return load_config_file(os.path.join(CONFIG_DIR, f"{name}.py"), arg)


def set_value(config, dotted_key, value):
    """config.a.b = value; a string `value` is read as JSON (`3`, `[16, 8]`, `"sgd"`, `true`) where it parses
    and cast to the existing value's type, as on the command line."""
    *parents, leaf = dotted_key.split(".")
    node = config
    for parent in parents:
        node = node[parent]
    current = node[leaf]
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
        value = tuple(value) if isinstance(current, tuple) else type(current)(value)
    node[leaf] = value
