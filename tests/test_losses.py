"""Tests for ssl_jax.losses: float64 NumPy references, properties, multi-device equivalence."""
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

N, D = 16, 8


# ----------------------------------------------------------------------------
# Independent float64 NumPy references (loops / textbook formulas).
# ----------------------------------------------------------------------------

def np_normalize(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def np_cos(a, b):
    return np.array([ai @ bi / (np.linalg.norm(ai) * np.linalg.norm(bi)) for ai, bi in zip(a, b)])


def ref_nt_xent(z1, z2, temperature=0.5):
    z = np_normalize(np.concatenate([z1, z2]))
    n2 = len(z)
    total = 0.0
    for i in range(n2):
        j = (i + n2 // 2) % n2
        denom = sum(np.exp(z[i] @ z[k] / temperature) for k in range(n2) if k != i)
        total += -np.log(np.exp(z[i] @ z[j] / temperature) / denom)
    return total / n2


def ref_byol(p1, p2, t1, t2):
    return np.mean(2 - 2 * np_cos(p1, t2)) + np.mean(2 - 2 * np_cos(p2, t1))


def ref_simsiam(p1, p2, z1, z2):
    return -0.5 * np.mean(np_cos(p1, z2)) - 0.5 * np.mean(np_cos(p2, z1))


def ref_moco_v3(q1, q2, k1, k2, temperature=0.2):
    def ctr(q, k):
        qn, kn = np_normalize(q), np_normalize(k)
        ce = []
        for i in range(len(q)):
            logits = np.array([qn[i] @ kn[j] / temperature for j in range(len(k))])
            ce.append(-logits[i] + np.log(np.sum(np.exp(logits))))
        return 2 * temperature * np.mean(ce)

    return ctr(q1, k2) + ctr(q2, k1)


def np_off_diag_sq(c):
    return sum(c[i, j] ** 2 for i in range(len(c)) for j in range(len(c)) if i != j)


def np_vicreg_var(z1, z2, eps):
    def hinge(z):
        return np.mean(np.maximum(0.0, 1 - np.sqrt(z.var(axis=0, ddof=1) + eps)))

    return hinge(z1) / 2 + hinge(z2) / 2


def ref_vicreg(z1, z2, sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0, eps=1e-4):
    d = z1.shape[1]
    inv = np.mean((z1 - z2) ** 2)
    var = np_vicreg_var(z1, z2, eps)
    cov = sum(np_off_diag_sq(np.cov(z, rowvar=False)) / d for z in (z1, z2))
    return sim_coeff * inv + std_coeff * var + cov_coeff * cov


def np_contrast(z, cov, beta):
    c = beta * cov + (1 - beta) * sum(np.outer(zi, zi) for zi in z) / len(z)
    return np.mean([zi @ c @ zi for zi in z]), c


def ref_tico(z1, z2, cov, beta=0.9, rho=8.0, return_cov=False):
    z1, z2 = np_normalize(z1), np_normalize(z2)
    contrast, c = np_contrast(z1, cov, beta)
    loss = -np.mean(np.sum(z1 * z2, axis=1)) + rho * contrast
    return (loss, c) if return_cov else loss


def ref_vicreg_tico(z1, z2, cov, sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0, beta=0.9, eps=1e-4,
                    projections="raw", return_cov=False):
    if projections == "raw":  # the seed study's contrast on raw projections, over D as VICReg's c(Z)
        contrast, c = np_contrast(z1, cov, beta)
        contrast = contrast / z1.shape[1]
    else:
        contrast, c = np_contrast(np_normalize(z1), cov, beta)
    loss = sim_coeff * np.mean((z1 - z2) ** 2) + std_coeff * np_vicreg_var(z1, z2, eps) + cov_coeff * contrast
    return (loss, c) if return_cov else loss


def ref_barlow(z1, z2, lambd=0.0051, eps=1e-5):
    def bn(z):
        return (z - z.mean(axis=0)) / np.sqrt(z.var(axis=0) + eps)

    c = bn(z1).T @ bn(z2) / len(z1)
    on = sum((1 - c[i, i]) ** 2 for i in range(len(c)))
    return on + lambd * np_off_diag_sq(c)


# ----------------------------------------------------------------------------
# Registry: loss, reference, inputs, which args are per-example (sharded over
# the batch) and which of those receive no gradient (stop-gradient side).
# ----------------------------------------------------------------------------

def _rand(rng, *shape):
    return rng.normal(size=shape).astype(np.float32)


def _rand_cov(rng, d=D):
    a = rng.normal(size=(d, d))
    return (a @ a.T / (4 * d)).astype(np.float32)


CASES = {
    "nt_xent": (losses.nt_xent, ref_nt_xent, 2, (), {"temperature": 0.3}),
    "byol": (losses.byol_loss, ref_byol, 4, (2, 3), {}),
    "simsiam": (losses.simsiam_loss, ref_simsiam, 4, (2, 3), {}),
    "moco_v3": (losses.moco_v3_loss, ref_moco_v3, 4, (2, 3), {"temperature": 0.2}),
    "vicreg": (losses.vicreg_loss, ref_vicreg, 2, (), {"sim_coeff": 10.0}),
    "barlow": (losses.barlow_twins_loss, ref_barlow, 2, (), {"lambd": 0.01}),
    "tico": (losses.tico_loss, ref_tico, 2, (), {"beta": 0.8, "rho": 4.0}),
    "vicreg_tico": (losses.vicreg_tico_loss, ref_vicreg_tico, 2, (), {"beta": 0.7, "cov_coeff": 2.0}),
    "vicreg_tico_normalized": (losses.vicreg_tico_loss, ref_vicreg_tico, 2, (),
                               {"beta": 0.7, "cov_coeff": 2.0, "projections": "normalized"}),
}
HAS_COV = ("tico", "vicreg_tico", "vicreg_tico_normalized")
GLOBAL_STATISTIC = ("vicreg", "barlow") + HAS_COV


def make_args(name, seed=0, n=N, d=D):
    rng = np.random.default_rng(seed)
    n_batch = CASES[name][2]
    args = [_rand(rng, n, d) for _ in range(n_batch)]
    if name in HAS_COV:
        args.append(_rand_cov(rng, d))
    return args


def n_batch_args(name):
    return CASES[name][2]


@functools.cache
def jit(fn):
    return jax.jit(fn)


@functools.cache
def jitted(name, **overrides):
    """The loss under jax.jit with the case's kwargs; cached so tests share compilations."""
    fn, _, _, _, kw = CASES[name]
    return jax.jit(functools.partial(fn, **{**kw, **overrides}))


@functools.cache
def jitted_grad(name, argnums, **overrides):
    fn, _, _, _, kw = CASES[name]
    return jax.jit(jax.grad(lambda *a: fn(*a, **{**kw, **overrides})[0], argnums=argnums))


def ref_loss(name, args):
    _, ref, _, _, kw = CASES[name]
    return ref(*[np.asarray(a, np.float64) for a in args], **kw)


def numeric_grad(f, args, argnum, h=1e-6):
    args = [np.asarray(a, np.float64) for a in args]
    g = np.zeros_like(args[argnum])
    for idx in np.ndindex(g.shape):
        plus = [a.copy() for a in args]
        minus = [a.copy() for a in args]
        plus[argnum][idx] += h
        minus[argnum][idx] -= h
        g[idx] = (f(*plus) - f(*minus)) / (2 * h)
    return g


# ----------------------------------------------------------------------------
# Values against the references, dtype, gradients.
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(CASES))
def test_matches_numpy_reference(name):
    for seed in (0, 1):
        args = make_args(name, seed)
        loss, aux = jitted(name)(*args)
        chex.assert_shape(loss, ())
        assert loss.dtype == jnp.float32
        assert isinstance(aux, dict) and aux
        np.testing.assert_allclose(loss, ref_loss(name, args), rtol=2e-5, atol=1e-5)


AUX_TOTAL = {
    "byol": lambda a, kw: a["loss_12"] + a["loss_21"],
    "simsiam": lambda a, kw: -0.5 * a["cos_12"] - 0.5 * a["cos_21"],
    "moco_v3": lambda a, kw: a["loss_12"] + a["loss_21"],
    "vicreg": lambda a, kw: kw["sim_coeff"] * a["invariance"] + 25.0 * a["variance"] + a["covariance"],
    "barlow": lambda a, kw: a["on_diag"] + kw["lambd"] * a["off_diag"],
    "tico": lambda a, kw: a["invariance"] + kw["rho"] * a["covariance"],
    "vicreg_tico": lambda a, kw: (25.0 * a["invariance"] + 25.0 * a["variance"]
                                  + kw["cov_coeff"] * a["covariance"]),
    "vicreg_tico_normalized": lambda a, kw: (25.0 * a["invariance"] + 25.0 * a["variance"]
                                             + kw["cov_coeff"] * a["covariance"]),
}


@pytest.mark.parametrize("name", list(AUX_TOTAL))
def test_aux_terms_recombine_to_loss(name):
    loss, aux = jitted(name)(*make_args(name, seed=0))
    np.testing.assert_allclose(loss, AUX_TOTAL[name](aux, CASES[name][4]), rtol=1e-6)


@pytest.mark.parametrize("name", list(CASES))
def test_gradients_match_finite_differences_and_stop_gradient_sides_are_zero(name):
    """Checks gradient semantics: stop-gradient sides get exactly 0, the rest match finite
    differences of the reference (for TiCo: C carries gradient through z1ᵀz1/N only)."""
    _, ref, nb, sg, kw = CASES[name]
    args = make_args(name, seed=2, n=8, d=4)
    grads = jitted_grad(name, tuple(range(nb)))(*args)
    chex.assert_tree_all_finite(grads)
    for i, g in enumerate(grads):
        if i in sg:
            np.testing.assert_array_equal(g, 0.0)
            continue
        expected = numeric_grad(lambda *a: ref(*a, **kw), args, i)
        np.testing.assert_allclose(g, expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("name", list(CASES))
def test_bf16_inputs_computed_in_float32(name):
    nb = n_batch_args(name)
    args = make_args(name, seed=4)
    bf16 = [jnp.asarray(a, jnp.bfloat16) if i < nb else a for i, a in enumerate(args)]
    loss, _ = jitted(name)(*bf16)
    assert loss.dtype == jnp.float32
    upcast = [np.asarray(a, np.float32) for a in bf16]
    np.testing.assert_allclose(loss, jitted(name)(*upcast)[0], rtol=1e-6)


# ----------------------------------------------------------------------------
# Properties.
# ----------------------------------------------------------------------------

def test_nt_xent_permutation_invariant():
    rng = np.random.default_rng(5)
    z1 = _rand(rng, N, D)
    z2 = z1 + 0.3 * _rand(rng, N, D)
    perm = np.random.default_rng(0).permutation(N)
    a, _ = jit(losses.nt_xent)(z1, z2)
    b, _ = jit(losses.nt_xent)(z1[perm], z2[perm])
    np.testing.assert_allclose(a, b, rtol=1e-6)
    c, _ = jit(losses.nt_xent)(z1, z2[perm])
    assert c > a + 0.1


def test_nt_xent_temperature_direction_and_aux():
    rng = np.random.default_rng(6)
    z1 = _rand(rng, N, 32)
    z2 = z1 + 0.01 * _rand(rng, N, 32)
    values = [float(jit(losses.nt_xent)(z1, z2, temperature=t)[0]) for t in (1.0, 0.5, 0.1)]
    assert values[0] > values[1] > values[2]
    _, aux = jit(losses.nt_xent)(z1, z2, temperature=0.1)
    np.testing.assert_allclose(aux["accuracy"], 1.0)
    assert aux["positive_sim"] > 0.99


def test_nt_xent_masks_self_without_nan():
    z = np.ones((N, D), np.float32)
    loss, _ = jit(losses.nt_xent)(z, z, temperature=0.05)
    np.testing.assert_allclose(loss, np.log(2 * N - 1), rtol=1e-5)
    chex.assert_tree_all_finite(jax.jit(jax.grad(lambda z: losses.nt_xent(z, z, temperature=0.05)[0]))(z))


def test_byol_range_and_extremes():
    for seed in range(3):
        loss, _ = jit(losses.byol_loss)(*make_args("byol", seed))
        assert 0.0 <= loss <= 8.0
    p1, p2 = np_normalize(_rand(np.random.default_rng(7), 2 * N, D)).reshape(2, N, D)
    np.testing.assert_allclose(jit(losses.byol_loss)(p1, p2, p2, p1)[0], 0.0, atol=1e-6)
    np.testing.assert_allclose(jit(losses.byol_loss)(p1, p2, -p2, -p1)[0], 8.0, rtol=1e-6)


def test_simsiam_extremes():
    p1, p2 = make_args("simsiam", 8)[:2]
    np.testing.assert_allclose(jit(losses.simsiam_loss)(p1, p2, 3 * p2, 2 * p1)[0], -1.0, rtol=1e-6)


def test_vicreg_variance_collapsed_vs_spread():
    eps = 1e-4
    collapsed = np.tile(_rand(np.random.default_rng(9), 1, D), (N, 1))
    _, aux = jit(losses.vicreg_loss)(collapsed, collapsed, eps=eps)
    np.testing.assert_allclose(aux["variance"], 1 - np.sqrt(eps), rtol=1e-5)
    np.testing.assert_allclose(aux["invariance"], 0.0)
    spread = 10 * _rand(np.random.default_rng(10), N, D)
    _, aux = jit(losses.vicreg_loss)(spread, spread + 0.1, eps=eps)
    np.testing.assert_allclose(aux["variance"], 0.0)


def test_vicreg_covariance_zero_for_decorrelated():
    h = _hadamard_design()
    _, aux = jit(losses.vicreg_loss)(h, h)
    np.testing.assert_allclose(aux["covariance"], 0.0, atol=1e-10)


def _hadamard_design(n=N, d=D):
    """±1 Sylvester-Hadamard columns bar the all-ones one: zero mean, unit variance, orthogonal."""
    h = np.array([[1.0]])
    while len(h) < n:
        h = np.block([[h, h], [h, -h]])
    return h[:, 1:d + 1].astype(np.float32)


def test_barlow_zero_for_decorrelated_identical_views():
    h = _hadamard_design()
    loss, aux = jit(losses.barlow_twins_loss)(3 * h + 1, 3 * h + 1)
    np.testing.assert_allclose(loss, 0.0, atol=1e-8)
    np.testing.assert_allclose(aux["off_diag"], 0.0, atol=1e-10)
    _, aux = jit(losses.barlow_twins_loss)(h, -h)
    np.testing.assert_allclose(aux["on_diag"], 4.0 * D, rtol=1e-4)


@pytest.mark.parametrize("name", HAS_COV)
def test_tico_new_cov_symmetric_psd_and_ema(name):
    fn, _, _, _, kw = CASES[name]
    z1, z2, cov = make_args(name, seed=11)
    _, aux = jitted(name)(z1, z2, cov)
    c = np.asarray(aux["cov"], np.float64)
    np.testing.assert_allclose(c, c.T, atol=1e-6)
    assert np.linalg.eigvalsh(c).min() >= -1e-6
    ref = CASES[name][1]
    _, expected = ref(*(np.asarray(a, np.float64) for a in (z1, z2, cov)), **kw, return_cov=True)
    np.testing.assert_allclose(c, expected, rtol=1e-5, atol=1e-6)
    _, aux = jitted(name, beta=1.0)(z1, z2, cov)
    np.testing.assert_allclose(aux["cov"], cov, rtol=1e-6)
    np.testing.assert_array_equal(jitted_grad(name, (2,))(z1, z2, cov)[0], 0.0)


def test_tico_batch_cov_of_normalised_rows_has_unit_trace():
    z1, z2 = make_args("tico", seed=12)[:2]
    _, aux = jit(losses.tico_loss)(z1, z2, losses.tico_initial_cov(D), beta=0.0)
    np.testing.assert_allclose(np.trace(aux["cov"]), 1.0, rtol=1e-5)
    chex.assert_shape(losses.tico_initial_cov(D), (D, D))


# ----------------------------------------------------------------------------
# Multi-device (jax.shard_map over mesh axis 'batch', 8 and 2 of the 8 fake
# CPU devices).
#
# Findings, jax 0.10.2, shard_map with the default check_vma=True:
#  * mean_d L_d equals the single-device loss for every loss.
#  * Inputs: per-device jax.grad(L_d) w.r.t. the local rows z is
#    sum_d' dL_d'/dz_local (all_gather transposes to psum_scatter), so
#    grad / num_devices == gradient of the global loss for those rows. The same
#    holds with check_vma=False.
#  * Replicated parameters (in_specs P()): with check_vma=True the per-device
#    jax.grad(L_d) w.r.t. params is ALREADY psum'd over 'batch' (the implicit
#    pvary of an invariant input transposes to psum): it equals
#    num_devices * global gradient, is typed invariant, and lax.pmean of it is
#    a no-op, so "grad then pmean" is num_devices times too large. Correct
#    under check_vma=True: jax.grad(lambda p: lax.pmean(L_d(p), 'batch')), which
#    gives exactly the global gradient (for params and inputs alike), or
#    divide the grads by num_devices. With check_vma=False or jax.pmap the
#    per-device grad is the local dL_d/dparams and lax.pmean(grads) is right.
#  * Outputs derived from all_gather (e.g. tico aux['cov'], global-statistic
#    losses) are typed varying, though identical on every device: out_specs P()
#    rejects them under check_vma=True; lax.pmean them (or return per device).
# ----------------------------------------------------------------------------

def _mesh(ndev):
    return Mesh(np.array(jax.devices()[:ndev]), ("batch",))


def _batch_specs(name, n_args):
    return tuple(P("batch") if i < n_batch_args(name) else P() for i in range(n_args))


def _sharded_loss_and_grads(name, args, ndev):
    """Per device: L_d, aux['cov'] (if any), grad of L_d and grad of pmean_d L_d w.r.t. the batch args."""
    fn, _, nb, _, kw = CASES[name]
    argnums = tuple(range(nb))

    def loss_d(*a):
        return fn(*a, axis_name="batch", **kw)

    def per_device(*a):
        (value, aux), grads = jax.value_and_grad(loss_d, argnums=argnums, has_aux=True)(*a)
        grads_of_mean = jax.grad(lambda *b: lax.pmean(loss_d(*b)[0], "batch"), argnums=argnums)(*a)
        return value[None], aux.get("cov", jnp.zeros(()))[None], grads, grads_of_mean

    out_specs = (P("batch"), P("batch"), (P("batch"),) * nb, (P("batch"),) * nb)
    f = jax.shard_map(per_device, mesh=_mesh(ndev), in_specs=_batch_specs(name, len(args)),
                      out_specs=out_specs)
    return jax.jit(f)(*args)


@pytest.mark.parametrize("ndev", [8, 2])
@pytest.mark.parametrize("name", list(CASES))
def test_multi_device_loss_and_input_grads(name, ndev):
    nb = n_batch_args(name)
    args = make_args(name, seed=13)
    per_device_loss, per_device_cov, grads, grads_of_mean = _sharded_loss_and_grads(name, args, ndev)
    chex.assert_shape(per_device_loss, (ndev,))
    expected_loss, expected_aux = jitted(name)(*args)
    np.testing.assert_allclose(per_device_loss.mean(), expected_loss, rtol=1e-5, atol=1e-6)
    if name in GLOBAL_STATISTIC:
        np.testing.assert_allclose(per_device_loss, np.full(ndev, expected_loss), rtol=1e-5, atol=1e-6)
    if name in HAS_COV:
        for c in per_device_cov:
            np.testing.assert_allclose(c, expected_aux["cov"], rtol=1e-5, atol=1e-7)
    expected = jitted_grad(name, tuple(range(nb)))(*args)
    for g, gm, e in zip(grads, grads_of_mean, expected):
        atol = 1e-5 * max(1.0, float(np.abs(e).max()))
        np.testing.assert_allclose(g / ndev, e, rtol=1e-4, atol=atol)
        np.testing.assert_allclose(gm, e, rtol=1e-4, atol=atol)


@pytest.mark.parametrize("check_vma", [True, False])
@pytest.mark.parametrize("name", ["nt_xent", "vicreg"])
def test_multi_device_param_grads_train_step_recipe(name, check_vma):
    """Mirrors the train step: replicated params w, per-example embeddings x_i @ w.

    nt_xent stands for the local-anchor losses, vicreg for the global-statistic ones.
    """
    fn, _, nb, _, kw = CASES[name]
    args = make_args(name, seed=15)
    w = _rand(np.random.default_rng(16), D, D)
    ndev = 8

    def embed_and_loss(w, *a, axis_name=None):
        return fn(*[x @ w for x in a], axis_name=axis_name, **kw)[0]

    def per_device(w, *a):
        loss_d = functools.partial(embed_and_loss, axis_name="batch")
        g = jax.grad(loss_d)(w, *a)
        return g, lax.pmean(g, "batch"), jax.grad(lambda w: lax.pmean(loss_d(w, *a), "batch"))(w)

    f = jax.shard_map(per_device, mesh=_mesh(ndev), in_specs=(P(),) + _batch_specs(name, len(args)),
                      out_specs=(P(),) * 3, check_vma=check_vma)
    grad, pmean_grad, grad_of_pmean = jax.jit(f)(w, *args)
    expected = jax.jit(jax.grad(embed_and_loss))(w, *args)
    close = dict(rtol=1e-4, atol=1e-5 * float(np.abs(expected).max()))
    if check_vma:
        np.testing.assert_allclose(grad, ndev * expected, **close)
        np.testing.assert_allclose(pmean_grad, ndev * expected, **close)
        np.testing.assert_allclose(grad_of_pmean, expected, **close)
    else:
        np.testing.assert_allclose(pmean_grad, expected, **close)
