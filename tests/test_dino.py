"""Tests for DINO's pieces: losses.dino_loss against a float64 NumPy reference of Algorithm 1, on 8 devices,
its gradients and properties; losses.dino_teacher_temperature; models.DINOHead."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from ssl_jax import losses
from ssl_jax.models import DINOHead

V, B, K = 4, 8, 16  # 2 global + 2 local crops
KW = dict(student_temperature=0.1, teacher_temperature=0.04, center_momentum=0.9)


# ----------------------------------------------------------------------------
# Float64 NumPy reference, written from the paper's Algorithm 1 (two crops)
# extended to multi-crop as Sec. 3.1: sum over global crops x and all
# crops x' != x of H(P_t(x), P_s(x')), averaged over those pairs.
# ----------------------------------------------------------------------------

def np_softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def ref_H(t, s, center, tps, tpt):
    """Algorithm 1's H(t, s): -(t * log s).sum(dim=1).mean(), t and s softmaxed, t centred."""
    s = np_softmax(s / tps)
    t = np_softmax((t - center) / tpt)
    return -(t * np.log(s)).sum(axis=1).mean()


def ref_dino(student, teacher, center, student_temperature=0.1, teacher_temperature=0.04, center_momentum=0.9):
    student, teacher, center = (np.asarray(a, np.float64) for a in (student, teacher, center))
    total, n_terms = 0.0, 0
    for i in range(len(teacher)):
        for v in range(len(student)):
            if v == i:
                continue
            total += ref_H(teacher[i], student[v], center, student_temperature, teacher_temperature)
            n_terms += 1
    # Algorithm 1: C = m*C + (1-m)*cat([t1, t2]).mean(dim=0)
    new_center = center_momentum * center + (1 - center_momentum) * np.concatenate(list(teacher)).mean(axis=0)
    return total / n_terms, new_center


def make_args(seed=0, v=V, b=B, k=K, scale=1.0):
    rng = np.random.default_rng(seed)
    student = (scale * rng.normal(size=(v, b, k))).astype(np.float32)
    teacher = (scale * rng.normal(size=(2, b, k))).astype(np.float32)
    center = (0.3 * rng.normal(size=(k,))).astype(np.float32)
    return student, teacher, center


@functools.cache
def jitted(**kw):
    return jax.jit(functools.partial(losses.dino_loss, **kw))


# ----------------------------------------------------------------------------
# (a) Values against the reference.
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1])
def test_matches_algorithm_1_reference(seed):
    student, teacher, center = make_args(seed)
    loss, aux = jitted(**KW)(student, teacher, center)
    ref_loss, ref_center = ref_dino(student, teacher, center, **KW)
    chex.assert_shape(loss, ())
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6, atol=1e-6)
    chex.assert_shape(aux["center"], (K,))
    np.testing.assert_allclose(aux["center"], ref_center, rtol=1e-6, atol=1e-7)
    for name in ("teacher_entropy", "kl", "teacher_max_prob", "student_entropy"):
        chex.assert_shape(aux[name], ())
        assert np.isfinite(aux[name])


def test_diagnostics_against_reference():
    student, teacher, center = make_args(3)
    _, aux = jitted(**KW)(student, teacher, center)
    p_t = np_softmax((teacher.astype(np.float64) - center) / KW["teacher_temperature"])
    p_s = np_softmax(student.astype(np.float64) / KW["student_temperature"])
    np.testing.assert_allclose(aux["teacher_entropy"], np.mean(-(p_t * np.log(p_t)).sum(-1)), rtol=1e-5)
    np.testing.assert_allclose(aux["teacher_max_prob"], np.mean(p_t.max(-1)), rtol=1e-6)
    np.testing.assert_allclose(aux["student_entropy"], np.mean(-(p_s * np.log(p_s)).sum(-1)), rtol=1e-5)
    kl = np.mean([np.mean((p_t[i] * (np.log(p_t[i]) - np.log(p_s[v]))).sum(-1))
                  for i in range(2) for v in range(V) if v != i])
    np.testing.assert_allclose(aux["kl"], kl, rtol=1e-5, atol=1e-6)


def test_two_crops_is_algorithm_1_symmetrised():
    """V = 2 (no local crops): loss = H(t1, s2)/2 + H(t2, s1)/2, exactly Algorithm 1."""
    student, teacher, center = make_args(4, v=2)
    loss, _ = jitted(**KW)(student, teacher, center)
    s, t, c = (a.astype(np.float64) for a in (student, teacher, center))
    expected = ref_H(t[0], s[1], c, 0.1, 0.04) / 2 + ref_H(t[1], s[0], c, 0.1, 0.04) / 2
    np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_center_shape_1xk_accepted_and_traced_teacher_temperature():
    student, teacher, center = make_args(5)
    fn = jax.jit(lambda s, t, c, temp: losses.dino_loss(s, t, c, teacher_temperature=temp))
    temp = losses.dino_teacher_temperature(10, 30)
    loss, aux = fn(student, teacher, center[None], temp)
    ref_loss, ref_center = ref_dino(student, teacher, center, teacher_temperature=float(temp))
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    chex.assert_shape(aux["center"], (K,))
    np.testing.assert_allclose(aux["center"], ref_center, rtol=1e-6, atol=1e-7)


def test_bf16_inputs_computed_in_float32():
    student, teacher, center = make_args(6)
    bf16 = [jnp.asarray(a, jnp.bfloat16) for a in (student, teacher)]
    loss, aux = jitted(**KW)(*bf16, center)
    assert loss.dtype == jnp.float32 and aux["center"].dtype == jnp.float32
    upcast = [np.asarray(a, np.float32) for a in bf16]
    np.testing.assert_allclose(loss, jitted(**KW)(*upcast, center)[0], rtol=1e-6)


def test_initial_center_and_shape_errors():
    c = losses.dino_initial_center(K)
    assert c.shape == (K,) and c.dtype == jnp.float32 and not np.any(c)
    student, teacher, center = make_args(7)
    with pytest.raises(ValueError, match="centre"):
        losses.dino_loss(student, teacher, center[:-1])
    with pytest.raises(ValueError, match="T="):
        losses.dino_loss(student[:1], teacher[:1], center)


# ----------------------------------------------------------------------------
# (b) 8 devices: batch split over mesh axis 'batch'.
# ----------------------------------------------------------------------------

def test_eight_devices_match_one_device():
    ndev = 8
    student, teacher, center = make_args(8, b=2 * ndev)
    mesh = Mesh(np.array(jax.devices()[:ndev]), ("batch",))

    def per_device(s, t, c):
        loss_fn = lambda s: losses.dino_loss(s, t, c, axis_name="batch", **KW)  # noqa: E731
        (loss, aux), grad = jax.value_and_grad(loss_fn, has_aux=True)(s)
        grad_of_mean = jax.grad(lambda s: lax.pmean(loss_fn(s)[0], "batch"))(s)
        return loss[None], aux["center"][None], aux["center"], grad_of_mean

    f = jax.shard_map(per_device, mesh=mesh, in_specs=(P(None, "batch"), P(None, "batch"), P()),
                      out_specs=(P("batch"), P("batch"), P(), P(None, "batch")))
    per_device_loss, per_device_center, center_invariant, grad = jax.jit(f)(student, teacher, center)
    expected_loss, expected_aux = jitted(**KW)(student, teacher, center)
    chex.assert_shape(per_device_loss, (ndev,))
    np.testing.assert_allclose(per_device_loss.mean(), expected_loss, rtol=1e-6, atol=1e-6)
    # The centre is identical on every device (bit for bit) and equals the one-device one.
    for c in per_device_center:
        np.testing.assert_array_equal(c, per_device_center[0])
    np.testing.assert_array_equal(center_invariant, per_device_center[0])
    np.testing.assert_allclose(center_invariant, expected_aux["center"], rtol=1e-6, atol=1e-7)
    # grad of pmean_d L_d w.r.t. the local student rows is the global gradient.
    expected_grad = jax.jit(jax.grad(lambda s: losses.dino_loss(s, teacher, center, **KW)[0]))(student)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-7 * float(np.abs(expected_grad).max()))


def test_pmap_center_matches_one_device():
    ndev = 8
    student, teacher, center = make_args(9, b=ndev)
    split = lambda a: np.moveaxis(a.reshape(a.shape[0], ndev, -1, K), 1, 0)  # noqa: E731
    f = jax.pmap(lambda s, t, c: losses.dino_loss(s, t, c, axis_name="batch", **KW), axis_name="batch",
                 in_axes=(0, 0, None))
    loss, aux = f(split(student), split(teacher), center)
    expected_loss, expected_aux = jitted(**KW)(student, teacher, center)
    np.testing.assert_allclose(loss.mean(), expected_loss, rtol=1e-6, atol=1e-6)
    for c in aux["center"]:
        np.testing.assert_allclose(c, expected_aux["center"], rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------
# (c) Gradients: student only.
# ----------------------------------------------------------------------------

def numeric_grad(f, x, h=1e-6):
    x = np.asarray(x, np.float64)
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[idx] += h
        minus[idx] -= h
        g[idx] = (f(plus) - f(minus)) / (2 * h)
    return g


def test_gradient_reaches_student_only():
    student, teacher, center = make_args(10, v=3, b=4, k=5)
    grads = jax.jit(jax.grad(lambda s, t, c: losses.dino_loss(s, t, c, **KW)[0], argnums=(0, 1, 2)))(
        student, teacher, center)
    chex.assert_tree_all_finite(grads)
    np.testing.assert_array_equal(grads[1], 0.0)
    np.testing.assert_array_equal(grads[2], 0.0)
    expected = numeric_grad(lambda s: ref_dino(s, teacher, center, **KW)[0], student)
    np.testing.assert_allclose(grads[0], expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())
    assert np.abs(grads[0]).max() > 0


def test_no_gradient_through_aux_center():
    student, teacher, center = make_args(11)
    g = jax.grad(lambda t, c: jnp.sum(losses.dino_loss(student, t, c, **KW)[1]["center"]), argnums=(0, 1))(
        teacher, center)
    np.testing.assert_array_equal(g[0], 0.0)
    np.testing.assert_array_equal(g[1], 0.0)


# ----------------------------------------------------------------------------
# (d) Properties.
# ----------------------------------------------------------------------------

def test_identical_crops_and_temperatures_give_the_entropy():
    """Every crop's logits x, teacher = student, temperatures equal, centre 0: p_t = p_s = softmax(x / T),
    so every pair's cross-entropy is H(p) and the loss is mean_b H(p_b); KL = 0."""
    rng = np.random.default_rng(12)
    x = rng.normal(size=(B, K)).astype(np.float32)
    temp = 0.5
    student = np.broadcast_to(x, (V, B, K))
    loss, aux = losses.dino_loss(student, student[:2], np.zeros(K, np.float32), student_temperature=temp,
                                 teacher_temperature=temp)
    p = np_softmax(x.astype(np.float64) / temp)
    entropy = np.mean(-(p * np.log(p)).sum(-1))
    np.testing.assert_allclose(loss, entropy, rtol=1e-6)
    np.testing.assert_allclose(aux["teacher_entropy"], entropy, rtol=1e-6)
    np.testing.assert_allclose(aux["kl"], 0.0, atol=1e-6)


def test_identical_two_crops_give_entropy_plus_half_jeffreys():
    """V = 2, teacher logits = student logits, temperatures equal, centre 0, crops p0 != p1:
    L = [H(p0, p1) + H(p1, p0)] / 2 = [H(p0) + H(p1)] / 2 + [KL(p0||p1) + KL(p1||p0)] / 2."""
    student, _, _ = make_args(13, v=2)
    temp = 0.3
    loss, _ = losses.dino_loss(student, student, np.zeros(K, np.float32), student_temperature=temp,
                               teacher_temperature=temp)
    p0, p1 = (np_softmax(student[i].astype(np.float64) / temp) for i in range(2))
    h = lambda p: -(p * np.log(p)).sum(-1)  # noqa: E731
    kl = lambda p, q: (p * (np.log(p) - np.log(q))).sum(-1)  # noqa: E731
    expected = np.mean((h(p0) + h(p1)) / 2 + (kl(p0, p1) + kl(p1, p0)) / 2)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_uniform_teacher_gives_log_k_plus_kl():
    """Constant teacher logits (uniform collapse) and uniform student: loss = log K, teacher entropy log K."""
    loss, aux = losses.dino_loss(np.zeros((V, B, K), np.float32), np.full((2, B, K), 3.0, np.float32),
                                 np.zeros(K, np.float32))
    # float32 against float64 log K: 1.1e-6 apart on one host (AMD EPYC), so the float32 tolerance 1e-5
    np.testing.assert_allclose(loss, np.log(K), rtol=1e-5)
    np.testing.assert_allclose(aux["teacher_entropy"], np.log(K), rtol=1e-5)
    np.testing.assert_allclose(aux["teacher_max_prob"], 1.0 / K, rtol=1e-5)


def test_invariant_to_constant_shift_of_student_logits():
    student, teacher, center = make_args(14)
    loss, _ = jitted(**KW)(student, teacher, center)
    shifted, _ = jitted(**KW)(student + 7.5, teacher, center)
    per_row = student + np.random.default_rng(15).normal(size=(V, B, 1)).astype(np.float32)
    row_shifted, _ = jitted(**KW)(per_row, teacher, center)
    np.testing.assert_allclose(shifted, loss, rtol=1e-5)
    np.testing.assert_allclose(row_shifted, loss, rtol=1e-5)


def test_center_is_ema_of_teacher_mean():
    student, teacher, center = make_args(16)
    _, aux = losses.dino_loss(student, teacher, center, center_momentum=0.0)
    np.testing.assert_allclose(aux["center"], teacher.mean(axis=(0, 1)), rtol=1e-6, atol=1e-7)
    _, aux = losses.dino_loss(student, teacher, center, center_momentum=1.0)
    np.testing.assert_array_equal(aux["center"], center)


# ----------------------------------------------------------------------------
# (e) Teacher temperature schedule.
# ----------------------------------------------------------------------------

def test_teacher_temperature_schedule_values():
    sched = losses.dino_teacher_temperature
    np.testing.assert_allclose(sched(0, 30), 0.04, rtol=1e-6)
    np.testing.assert_allclose(sched(15, 30), 0.055, rtol=1e-6)
    np.testing.assert_allclose(sched(30, 30), 0.07, rtol=1e-6)
    np.testing.assert_allclose(sched(1000, 30), 0.07, rtol=1e-6)
    np.testing.assert_allclose(sched(-5, 30), 0.04, rtol=1e-6)
    np.testing.assert_allclose(sched(0, 0), 0.07, rtol=1e-6)
    np.testing.assert_allclose(sched(5, 10, warmup_temperature=0.04, final_temperature=0.04), 0.04, rtol=1e-6)
    assert sched(3, 30).dtype == jnp.float32


def test_teacher_temperature_schedule_traced():
    steps = jnp.array([0, 50, 100, 101, 5000])
    temps = jax.jit(jax.vmap(lambda s: losses.dino_teacher_temperature(s, 100)))(steps)
    np.testing.assert_allclose(temps, [0.04, 0.055, 0.07, 0.07, 0.07], rtol=1e-6)
    traced_warmup = jax.jit(losses.dino_teacher_temperature)(jnp.int32(25), jnp.int32(100))
    np.testing.assert_allclose(traced_warmup, 0.0475, rtol=1e-6)


# ----------------------------------------------------------------------------
# (f) DINOHead.
# ----------------------------------------------------------------------------

KEY = jax.random.key(0, impl="rbg")
SMALL_HEAD = dict(out_dim=64, hidden_dim=32, bottleneck_dim=8)


def _head_input(n=6, d=12, seed=17):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def test_head_shapes_and_defaults():
    head = DINOHead()
    assert (head.out_dim, head.hidden_dim, head.bottleneck_dim, head.num_layers) == (65536, 2048, 256, 3)
    assert not head.use_bn and head.norm_last_layer
    def init_and_apply():
        v = head.init(KEY, jnp.zeros((4, 512)), train=False)
        return v, head.apply(v, jnp.zeros((4, 512)), train=True)

    variables, out = jax.eval_shape(init_and_apply)  # shapes only: no 65536-wide compute
    assert out.shape == (4, 65536) and out.dtype == jnp.float32
    params = variables["params"]
    assert set(params) == {"linear1", "linear2", "linear3", "last_layer_v"}
    assert params["linear1"]["kernel"].shape == (512, 2048)
    assert params["linear2"]["kernel"].shape == (2048, 2048)
    assert params["linear3"]["kernel"].shape == (2048, 256)
    assert params["last_layer_v"].shape == (256, 65536)
    assert "batch_stats" not in variables


def test_head_output_is_normalised_bottleneck_times_unit_columns():
    head = DINOHead(**SMALL_HEAD)
    x = _head_input()
    variables = head.init(KEY, x, train=False)
    out, state = head.apply(variables, x, train=True, capture_intermediates=True, mutable=["intermediates"])
    bottleneck = np.asarray(state["intermediates"]["linear3"]["__call__"][0], np.float64)
    v = np.asarray(variables["params"]["last_layer_v"], np.float64)
    expected = (bottleneck / np.linalg.norm(bottleneck, axis=1, keepdims=True)) @ (v / np.linalg.norm(v, axis=0))
    assert out.shape == (6, 64)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    assert np.abs(out).max() <= 1.0 + 1e-6  # cosine similarities
    # The MLP: exact GELU between the Linears, none after the last.
    p = variables["params"]
    h = x.astype(np.float64)
    for name in ("linear1", "linear2"):
        h = np.asarray(jax.nn.gelu(h @ p[name]["kernel"] + p[name]["bias"], approximate=False), np.float64)
    np.testing.assert_allclose(bottleneck, h @ p["linear3"]["kernel"] + p["linear3"]["bias"], rtol=1e-4,
                               atol=1e-6)


def test_head_scaling_v_changes_nothing_and_g_is_not_a_parameter():
    head = DINOHead(**SMALL_HEAD)
    x = _head_input()
    variables = head.init(KEY, x, train=False)
    assert "last_layer_g" not in variables["params"]
    out = head.apply(variables, x, train=False)
    for factor in (3.7, 1e-3):
        scaled = {"params": {**variables["params"], "last_layer_v": variables["params"]["last_layer_v"] * factor}}
        np.testing.assert_allclose(head.apply(scaled, x, train=False), out, rtol=1e-5, atol=1e-7)
    # The gradient w.r.t. v is orthogonal to each column of v (the norm is not learned).
    gv = jax.grad(lambda v: jnp.sum(head.apply({"params": {**variables["params"], "last_layer_v": v}}, x,
                                               train=False) ** 2))(variables["params"]["last_layer_v"])
    v = variables["params"]["last_layer_v"]
    np.testing.assert_allclose(jnp.sum(gv * v, axis=0), 0.0, atol=1e-6)


def test_head_without_norm_last_layer_trains_g():
    head = DINOHead(**SMALL_HEAD, norm_last_layer=False)
    x = _head_input()
    variables = head.init(KEY, x, train=False)
    g = variables["params"]["last_layer_g"]
    np.testing.assert_array_equal(g, np.ones(64, np.float32))
    out = head.apply(variables, x, train=False)
    doubled = {"params": {**variables["params"], "last_layer_g": 2 * g}}
    np.testing.assert_allclose(head.apply(doubled, x, train=False), 2 * out, rtol=1e-6)
    np.testing.assert_allclose(out, DINOHead(**SMALL_HEAD).apply(
        {"params": {k: a for k, a in variables["params"].items() if k != "last_layer_g"}}, x, train=False),
        rtol=1e-6)


def test_head_one_layer_and_batchnorm_per_view():
    x = _head_input(n=8)
    one = DINOHead(**SMALL_HEAD, num_layers=1)
    params = one.init(KEY, x, train=False)["params"]
    assert set(params) == {"linear1", "last_layer_v"} and params["linear1"]["kernel"].shape == (12, 8)
    bn = DINOHead(**SMALL_HEAD, use_bn=True)
    variables = bn.init(KEY, x, train=False)
    assert set(variables["batch_stats"]) == {"bn1", "bn2"}
    out, updates = bn.apply(variables, x, train=True, num_views=2, mutable=["batch_stats"])
    assert out.shape == (8, 64) and np.all(np.isfinite(out))
    # Per-view statistics: the first view's output does not depend on the second view's inputs.
    x2 = x.copy()
    x2[4:] += 5.0
    out2, _ = bn.apply(variables, x2, train=True, num_views=2, mutable=["batch_stats"])
    np.testing.assert_allclose(out2[:4], out[:4], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="num_layers"):
        DINOHead(num_layers=0).init(KEY, x, train=False)


def test_head_init_scales():
    """Linear weights N(0, 0.02), biases 0; v uniform in +-1/sqrt(bottleneck_dim)."""
    head = DINOHead(out_dim=4096, hidden_dim=256, bottleneck_dim=64)
    params = jax.jit(lambda: head.init(KEY, jnp.zeros((2, 128)), train=False))()["params"]
    np.testing.assert_allclose(np.std(params["linear2"]["kernel"]), 0.02, rtol=0.02)
    np.testing.assert_array_equal(params["linear2"]["bias"], 0.0)
    v = np.asarray(params["last_layer_v"])
    assert np.abs(v).max() <= 1 / np.sqrt(64) and np.abs(v).max() > 0.95 / np.sqrt(64)
    np.testing.assert_allclose(np.std(v), 1 / np.sqrt(3 * 64), rtol=0.02)


# ----------------------------------------------------------------------------
# DINO in the train step (methods.METHODS['dino'], configs/dino_cifar.py)
# ----------------------------------------------------------------------------

def _dino_run(steps, **overrides):
    """A tiny DINO experiment (4 steps per epoch on 64 images, batch 16) run for `steps` steps; the host states
    after each step."""
    import helpers
    from ssl_jax import sharding
    from ssl_jax import train

    config = helpers.tiny_config("dino_cifar", batch_size=16, steps=steps, **overrides)
    exp = train.build_experiment(config, helpers.synthetic_dataset(num_train=64))
    state, step_fn = exp.dp.put_state(train.initial_state(exp)), train.make_step_fn(exp)
    states = [sharding.local_copy(exp.dp.get_state(state))]
    for step in range(steps):
        state, metrics = train.run_steps(exp, state, step, 1, step_fn)
        states.append(sharding.local_copy(exp.dp.get_state(state)))
        assert np.isfinite(float(metrics["loss"]))
    return exp, states


def test_dino_freezes_its_prototypes_for_the_first_epoch_and_centres_the_teacher():
    exp, states = _dino_run(6)
    assert exp.steps_per_epoch == 4
    last = [s.params["projector"]["last_layer_v"] for s in states]
    for step in range(1, 5):  # steps 0-3 are the first epoch: the prototypes do not move
        np.testing.assert_array_equal(last[step], last[0])
    assert not np.array_equal(last[6], last[4])  # from step 4 on they train
    first_layer = [s.params["projector"]["linear1"]["kernel"] for s in states]
    assert not np.array_equal(first_layer[1], first_layer[0])  # the rest of the head trains from step 0
    centers = [s.loss_state["center"] for s in states]
    assert centers[0].shape == (exp.config.model.num_prototypes,) and not centers[0].any()
    assert all(np.abs(c).sum() > 0 for c in centers[1:])


@pytest.mark.parametrize("method, prototypes, message", [
    ("dino_cifar", 0, "scores prototypes: set it > 0"),
    ("simclr_cifar", 64, "has no prototype head: set it to 0"),
])
def test_prototypes_and_method_must_agree(method, prototypes, message):
    import helpers
    from ssl_jax import train

    config = helpers.tiny_config(method, **{"model.num_prototypes": prototypes})
    with pytest.raises(ValueError, match=message):
        train.build_experiment(config, helpers.synthetic_dataset())


def test_vit_dino_smoke_config_trains_a_step_with_its_local_crops():
    """configs/dino_vit_cifar.py:smoke keeps a ViT (ViT-Ti, few blocks, its 4x4 patches and learned position
    embeddings); one step of it on synthetic images with its local crops switched on (16 px: a 4x4 grid against
    the global crops' 8x8) gives a finite loss."""
    import helpers
    from ssl_jax import config_lib
    from ssl_jax import sharding
    from ssl_jax import train

    smoke = helpers.load_config("dino_vit_cifar", "smoke")
    assert (smoke.model.name, smoke.model.vit_depth) == ("vit_tiny", config_lib.SMOKE_VIT_DEPTH)
    assert (smoke.model.patch_size, smoke.model.pos_embedding) == (4, "learned")
    assert smoke.augment.local_crops.crop_size < smoke.augment.view1.crop_size
    config = helpers.tiny_config("dino_vit_cifar", batch_size=8, steps=1, **{
        "model.vit_depth": 1, "model.num_prototypes": 32, "augment.local_crops.count": 2})
    groups = train.crop_groups(config)
    assert len(groups) == 3 and groups[2].count == 2 and groups[2].view.crop_size == 16
    exp = train.build_experiment(config, helpers.synthetic_dataset(num_train=16, num_test=8))
    state = exp.dp.put_state(train.initial_state(exp))
    state, metrics = train.run_steps(exp, state, 0, 1)
    assert np.isfinite(float(metrics["loss"]))
    assert int(sharding.local_copy(exp.dp.get_state(state)).step) == 1


def test_backbone_name_gives_a_vit_its_blocks_and_patch_and_a_resnet_its_width():
    """The start line, eval.json and the learning check describe the backbone with config_lib.backbone_name: a
    ViT has no ResNet width, so 'width 64' (the ResNet default left in its config) must not be said of it."""
    import helpers
    from ssl_jax import config_lib

    vit = helpers.load_config("dino_vit_cifar", arg=None)
    assert config_lib.backbone_name(vit) == "vit_tiny of 12 blocks, patch 4"
    vit.model.vit_depth = 2
    assert config_lib.backbone_name(vit) == "vit_tiny of 2 blocks, patch 4"
    assert config_lib.backbone_name(helpers.load_config("simclr_cifar", arg=None)) == "resnet18 of width 64"
