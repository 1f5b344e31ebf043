"""Backend-independent FLOP counts from a function's jaxpr, and the per-device peaks that MFU is taken against.

Why the jaxpr: XLA's cost analysis depends on the backend (on the GPU it leaves out the convolutions, which it
hands to cuDNN as custom calls: 23 GFLOP for a step of 3.41 TFLOP, issue 15), while the jaxpr that
`jax.make_jaxpr` traces is the same everywhere and already holds every layer of the step as it runs: both views,
the EMA target's forward, the predictor, the loss, and the backward pass that autodiff wrote out as transposed
convolutions and matmuls. Tracing needs shapes only, so a count costs no compilation.

What is counted: `conv_general_dilated` and `dot_general`, 2 FLOPs per multiply-add, the work that MFU's dense
tensor-core peaks measure (the usual "model FLOPs" convention). A ViT's patch embedding is a convolution; its
attention (query, key and value projections, the scores q k^T, the weighted sum of values, the output projection)
and MLP are `dot_general`s, flax's attention einsums included (tests/test_flops.py: ViT-S/16 against a hand
count). Element-wise work and reductions (BatchNorm, LayerNorm, ReLU, GELU, softmax, the optimizer, the
augmentation's colour operations) are not counted. Nested jaxprs are walked: jit,
custom_jvp/custom_vjp (their primal; under autodiff the rules' operations are traced into the outer jaxpr), remat;
`scan` bodies count `length` times, `shard_map` and `xla_pmap` bodies once per device, `cond` its largest branch,
`while` its body once (its trip count is not known from the trace).

A convolution counts out_elements x kernel_window x in_features_per_group multiply-adds, padding included, as the
usual hand counts do. The input gradient of a strided convolution is traced as a convolution over its
cotangent dilated by the stride (`lhs_dilation`), whose holes are zeros that cuDNN and XLA never multiply, so that
count is divided by the dilation's product: the gradient then costs what its forward does, exactly where the
input's size is a multiple of the stride (every strided convolution of these ResNets at 32x32 or 224x224), else
up to the border rows (tests/test_flops.py checks both gradients of plain, strided and grouped convolutions).
"""
import dataclasses
import json
import math

import jax
import numpy as np

__all__ = ["FlopCount", "count_flops", "jaxpr_flops", "train_step_flops", "PEAK_BF16_FLOPS", "peak_flops"]


@dataclasses.dataclass(frozen=True)
class FlopCount:
    """FLOPs (2 per multiply-add) of convolutions and of matmuls."""
    conv: float = 0.0
    dot: float = 0.0

    @property
    def total(self):
        return self.conv + self.dot

    def __add__(self, other):
        return FlopCount(self.conv + other.conv, self.dot + other.dot)

    def __mul__(self, factor):
        return FlopCount(self.conv * factor, self.dot * factor)


def count_flops(fn, *args, **kwargs):
    """FlopCount of `fn(*args, **kwargs)`, traced on the arguments' shapes (arrays or jax.ShapeDtypeStruct)."""
    return jaxpr_flops(jax.make_jaxpr(fn)(*args, **kwargs))


def jaxpr_flops(jaxpr):
    """FlopCount of a Jaxpr or ClosedJaxpr, nested jaxprs included (see the module docstring)."""
    total = FlopCount()
    for eqn in getattr(jaxpr, "jaxpr", jaxpr).eqns:
        total = total + _eqn_flops(eqn)
    return total


def _eqn_flops(eqn):
    name = eqn.primitive.name
    if name == "conv_general_dilated":
        return FlopCount(conv=_conv_flops(eqn))
    if name == "dot_general":
        return FlopCount(dot=_dot_flops(eqn))
    if name == "cond":
        return max((jaxpr_flops(branch) for branch in eqn.params["branches"]), key=lambda c: c.total)
    nested = FlopCount()
    for value in eqn.params.values():
        for sub in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(sub, (jax.extend.core.Jaxpr, jax.extend.core.ClosedJaxpr)):
                nested = nested + jaxpr_flops(sub)
    return nested * _repeats(eqn)


def train_step_flops(config, ready_views=False):
    """FlopCount of the trainer's step for `config` on all its devices together (`ready_views`: the step without
    its augmentation), traced on shapes alone: nothing is compiled or run, so a full-size count takes seconds."""
    from ssl_jax import data, train

    size, batch = config.augment.view1.crop_size, config.batch_size
    images = np.broadcast_to(np.uint8(0), (batch, size, size, 3))  # no memory: only the shapes are read
    split = data.Split(images, np.zeros(batch, np.int32))
    name = config.data.name
    num_classes = data.SPECS[name].num_classes if name in data.SPECS else data.FOLDER_DATASETS.get(name) or 1000
    exp = train.build_experiment(config, data.Dataset(config.data.name, num_classes, split, split, "shapes only"))
    state = jax.eval_shape(lambda: train.initial_state(exp))
    step_batch = {"image": images, "label": split.labels, "global_index": np.arange(batch, dtype=np.int32)}
    if ready_views:
        view = jax.ShapeDtypeStruct(images.shape, np.float32)
        step_batch = {"views": (view, view), "label": split.labels}
    return count_flops(train.make_step_fn(exp, ready_views=ready_views), state, step_batch)


def _repeats(eqn):
    """How many times an equation's nested jaxprs run: scan's length, shard_map's and pmap's devices, else 1."""
    params = eqn.params
    if eqn.primitive.name == "scan":
        return params["length"]
    if eqn.primitive.name == "shard_map":
        axes = params.get("newly_manual_axes") or params.get("manual_axes") or params["mesh"].axis_names
        return math.prod(params["mesh"].shape[axis] for axis in axes)
    if eqn.primitive.name == "xla_pmap":
        return params["axis_size"]
    return 1


def _dot_flops(eqn):
    """2 x output elements x contracted size."""
    lhs = eqn.invars[0].aval.shape
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    return 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contract)


def _conv_flops(eqn):
    """2 x output elements x kernel window x kernel input features, over the lhs dilation's product."""
    rhs = eqn.invars[1].aval.shape
    rhs_spec = eqn.params["dimension_numbers"].rhs_spec  # (out features, in features, *spatial)
    macs_per_output = rhs[rhs_spec[1]] * math.prod(rhs[d] for d in rhs_spec[2:])
    holes = math.prod(eqn.params["lhs_dilation"] or (1,))
    return 2.0 * math.prod(eqn.outvars[0].aval.shape) * macs_per_output / holes


# Dense (no 2:4 sparsity) bf16 peak FLOP/s of one JAX device, by a part of its `device_kind`; the longest part that
# matches wins, so "TPU v5 lite" is not read as "TPU v5". NVIDIA's data sheets give the figures with sparsity
# (halved here): H100 SXM 1,979, H100 PCIe 1,513, H100 NVL 1,671 (H100 Tensor Core GPU data sheet); H200 SXM
# 1,979, H200 NVL 1,671 (H200 data sheet); A100 312 dense (A100 data sheet). Google Cloud's TPU system
# architecture pages give bf16 per chip (one JAX device): v4 275, v5e 197, v5p 459, v6e (Trillium) 918 TFLOP/s;
# JAX names them "TPU v4", "TPU v5 lite", "TPU v5" and "TPU v6 lite".
PEAK_BF16_FLOPS = {
    "H100": 989e12, "H100 PCIe": 756e12, "H100 NVL": 835e12,
    "H200": 989e12, "H200 NVL": 835e12,
    "A100": 312e12,
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5": 459e12, "TPU v5p": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12,
}
_NO_PEAK = ("TPU v4 lite",)  # inference parts whose names contain a listed one


def peak_flops(device):
    """The device's dense bf16 peak FLOP/s from PEAK_BF16_FLOPS, or None where it is not listed (CPUs)."""
    kind = getattr(device, "device_kind", "").lower()
    if any(name.lower() in kind for name in _NO_PEAK):
        return None
    matches = [name for name in PEAK_BF16_FLOPS if name.lower() in kind]
    return PEAK_BF16_FLOPS[max(matches, key=len)] if matches else None


def main(argv):
    """`python -m ssl_jax.flops --config=CONFIG [--config.x=y ...] [--ready_views]`: one JSON line with the
    step's count, without compiling or running it (the bench prints the same count beside its timings)."""
    from absl import flags

    del argv
    config = flags.FLAGS.config
    count = train_step_flops(config, flags.FLAGS.ready_views)
    print(json.dumps(dict(
        method=config.method, model=config.model.name, width=config.model.width, batch_size=config.batch_size,
        ready_views=flags.FLAGS.ready_views, gflops_per_step=round(count.total / 1e9, 4),
        gflops_per_image=round(count.total / config.batch_size / 1e9, 4),
        conv_gflops=round(count.conv / 1e9, 4), dot_gflops=round(count.dot / 1e9, 4))), flush=True)


if __name__ == "__main__":
    from absl import flags as absl_flags

    from ssl_jax import cli

    cli.define_config_flag("Config file, as for ssl_jax.main.")
    absl_flags.DEFINE_bool("ready_views", False, "Count the step without its augmentation.")
    absl_flags.mark_flags_as_required(["config"])
    cli.run_cli(main, user_errors=(ValueError,))
