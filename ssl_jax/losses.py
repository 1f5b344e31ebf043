"""Self-supervised losses as pure functions: each returns ``(loss, aux)``.

``loss`` is a float32 scalar and ``aux`` a dict of scalars/arrays with the
individual terms. Inputs may be bf16; everything is computed in float32.

Multi-device convention. Inside a per-device SPMD function (``jax.shard_map``
or ``jax.pmap``) pass ``axis_name``; the per-device values ``L_d`` then satisfy
``mean_d L_d == L_global``, either because the loss is computed from the
gathered global batch and is identical on every device (VICReg, Barlow Twins,
TiCo, VICReg-TiCo) or because it is the mean over the device's local anchors
against gathered keys (NT-Xent, MoCo v3, BYOL, SimSiam) or local examples
(DINO, whose running centre is ``pmean``'d). ``lax.all_gather``
transposes to ``psum_scatter``, so the gradient of ``L_d`` w.r.t. local rows is
``sum_d' dL_d'/dz_local``: averaged over devices it is the global gradient.
Under ``jax.pmap`` or ``shard_map(check_vma=False)`` take ``pmean(grad(L_d))``;
under ``shard_map`` with the default ``check_vma=True`` the grad of replicated
params is already summed over devices, so take ``grad(pmean(L_d))`` instead
(see tests/test_losses.py).
"""
import jax
import jax.numpy as jnp
from jax import lax

_MASK = -1e9


def _f32(x):
    return jnp.asarray(x, jnp.float32)


def _l2_normalize(x, eps=1e-12):
    """x / max(||x||, eps) along the last axis (as torch's F.normalize)."""
    x = _f32(x)
    return x * lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def _gather(x, axis_name):
    """The global batch: local rows concatenated over ``axis_name`` in device order."""
    if axis_name is None:
        return x
    return lax.all_gather(x, axis_name, axis=0, tiled=True)


def _local_offset(n, axis_name):
    """Index of this device's first row in the gathered global batch."""
    if axis_name is None:
        return 0
    return lax.axis_index(axis_name) * n


def _cosine(a, b):
    return jnp.sum(_l2_normalize(a) * _l2_normalize(b), axis=-1)


def _cross_entropy(logits, labels):
    """Per-row softmax cross-entropy and whether the label is the top-1 logit."""
    picked = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
    ce = jax.nn.logsumexp(logits, axis=1) - picked
    correct = jnp.argmax(logits, axis=1) == labels
    return ce, correct


def _off_diagonal_sq_sum(c):
    return jnp.sum(jnp.where(jnp.eye(c.shape[0], dtype=bool), 0.0, c * c))


def nt_xent(z1, z2, temperature=0.5, axis_name=None):
    """SimCLR's NT-Xent (Chen et al. 2020, Eq. 1 and Algorithm 1).

    For the 2N views, with s the cosine similarity and (i, j) a positive pair,
    ``l(i, j) = -log exp(s_ij / t) / sum_{k != i} exp(s_ik / t)``, averaged over
    all 2N anchors. With ``axis_name`` the negatives are the whole global batch:
    this device's 2n anchors are scored against all 2N gathered keys and the
    loss is the mean over the local anchors.
    """
    n = z1.shape[0]
    a1, a2 = _l2_normalize(z1), _l2_normalize(z2)
    g1, g2 = _gather(a1, axis_name), _gather(a2, axis_name)
    big_n = g1.shape[0]
    anchors = jnp.concatenate([a1, a2], axis=0)
    keys = jnp.concatenate([g1, g2], axis=0)
    logits = anchors @ keys.T / temperature
    rows = _local_offset(n, axis_name) + jnp.arange(n)
    self_idx = jnp.concatenate([rows, rows + big_n])
    pos_idx = jnp.concatenate([rows + big_n, rows])
    is_self = self_idx[:, None] == jnp.arange(2 * big_n)[None, :]
    ce, correct = _cross_entropy(jnp.where(is_self, _MASK, logits), pos_idx)
    aux = {
        "positive_sim": jnp.mean(jnp.sum(a1 * a2, axis=-1)),
        "accuracy": jnp.mean(correct.astype(jnp.float32)),
    }
    return jnp.mean(ce), aux


def byol_loss(p1, p2, t1, t2, axis_name=None):
    """BYOL's symmetrised regression loss (Grill et al. 2020, Eq. 2).

    ``L = mean(2 - 2 cos(p1, sg(t2))) + mean(2 - 2 cos(p2, sg(t1)))``, in [0, 8].
    Targets come from the momentum network, so no gradient reaches them. It is
    a per-example mean, so with ``axis_name`` the local mean already satisfies
    the convention (``axis_name`` is accepted for a uniform signature).
    """
    del axis_name
    l12 = jnp.mean(2.0 - 2.0 * _cosine(p1, lax.stop_gradient(t2)))
    l21 = jnp.mean(2.0 - 2.0 * _cosine(p2, lax.stop_gradient(t1)))
    return l12 + l21, {"loss_12": l12, "loss_21": l21}


def simsiam_loss(p1, p2, z1, z2, axis_name=None):
    """SimSiam's symmetrised negative cosine (Chen & He 2021, Eq. 2).

    ``L = -0.5 mean cos(p1, sg(z2)) - 0.5 mean cos(p2, sg(z1))``; the stop
    gradient on z is what prevents collapse. Per-example mean: with
    ``axis_name`` the local mean satisfies the convention.
    """
    del axis_name
    c12 = jnp.mean(_cosine(p1, lax.stop_gradient(z2)))
    c21 = jnp.mean(_cosine(p2, lax.stop_gradient(z1)))
    return -0.5 * c12 - 0.5 * c21, {"cos_12": c12, "cos_21": c21}


def _moco_ctr(q, k, temperature, axis_name):
    """MoCo v3's ``ctr(q, k)``: 2t * CE(q̂ k̂ᵀ / t) with the matching key as positive."""
    qn = _l2_normalize(q)
    kn = _gather(_l2_normalize(lax.stop_gradient(k)), axis_name)
    labels = _local_offset(q.shape[0], axis_name) + jnp.arange(q.shape[0])
    ce, correct = _cross_entropy(qn @ kn.T / temperature, labels)
    return 2.0 * temperature * jnp.mean(ce), jnp.mean(correct.astype(jnp.float32))


def moco_v3_loss(q1, q2, k1, k2, temperature=0.2, axis_name=None):
    """MoCo v3's symmetrised InfoNCE (Chen, Xie & He 2021, Algorithm 1).

    ``L = ctr(q1, k2) + ctr(q2, k1)`` with in-batch keys from the momentum
    encoder (stop-gradient). With ``axis_name`` the local queries are scored
    against the gathered global keys; the loss is the mean over local queries.
    """
    l12, acc12 = _moco_ctr(q1, k2, temperature, axis_name)
    l21, acc21 = _moco_ctr(q2, k1, temperature, axis_name)
    aux = {"loss_12": l12, "loss_21": l21, "accuracy": 0.5 * (acc12 + acc21)}
    return l12 + l21, aux


def _vicreg_invariance(z1, z2):
    """``s(Z, Z') = mean ||z_i - z'_i||^2 / D`` (VICReg Eq. 5, as F.mse_loss)."""
    return jnp.mean(jnp.square(z1 - z2))


def _vicreg_variance(z1, z2, eps):
    """``v(Z) = mean_j relu(1 - sqrt(Var(z_j) + eps))`` (Eq. 1), averaged over the two branches."""

    def hinge(z):
        std = jnp.sqrt(jnp.var(z, axis=0, ddof=1) + eps)
        return jnp.mean(jax.nn.relu(1.0 - std))

    return 0.5 * hinge(z1) + 0.5 * hinge(z2)


def _vicreg_covariance(z):
    """``c(Z) = sum_{i != j} C(Z)_ij^2 / D`` with ``C(Z)`` the unbiased covariance (Eqs. 3-4)."""
    zc = z - jnp.mean(z, axis=0)
    cov = zc.T @ zc / (z.shape[0] - 1)
    return _off_diagonal_sq_sum(cov) / z.shape[1]


def vicreg_loss(z1, z2, sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0, eps=1e-4, axis_name=None):
    """VICReg (Bardes, Ponce & LeCun 2022, Eq. 6), as the official main_vicreg.py.

    ``L = sim_coeff * s(Z, Z') + std_coeff * [v(Z) + v(Z')] / 2 + cov_coeff * [c(Z) + c(Z')]``.
    The variance and covariance are batch statistics, so with ``axis_name`` both
    branches are gathered and the loss, computed on the global batch, is
    identical on every device.
    """
    z1, z2 = _gather(_f32(z1), axis_name), _gather(_f32(z2), axis_name)
    inv = _vicreg_invariance(z1, z2)
    var = _vicreg_variance(z1, z2, eps)
    cov = _vicreg_covariance(z1) + _vicreg_covariance(z2)
    loss = sim_coeff * inv + std_coeff * var + cov_coeff * cov
    return loss, {"invariance": inv, "variance": var, "covariance": cov}


def tico_initial_cov(dim):
    """The covariance state TiCo starts from: zeros, shape (dim, dim), float32."""
    return jnp.zeros((dim, dim), jnp.float32)


def _tico_contrast(z, cov, beta):
    """``C_t = beta sg(C_{t-1}) + (1 - beta) zᵀz / N`` and ``mean_i z_iᵀ C_t z_i``.

    ``C_t`` carries gradient through its batch part only; it is returned
    stop-gradient'ed as the next state.
    """
    c = beta * lax.stop_gradient(_f32(cov)) + (1.0 - beta) * (z.T @ z) / z.shape[0]
    return jnp.mean(jnp.sum((z @ c) * z, axis=-1)), lax.stop_gradient(c)


def tico_loss(z1, z2, cov, beta=0.9, rho=8.0, axis_name=None):
    """TiCo (Zhu et al. 2022, Eq. 4): transformation invariance plus covariance contrast.

    With z1, z2 L2-normalised and ``C_t = beta C_{t-1} + (1 - beta) z1ᵀz1 / N``,
    ``L = -mean_i <z1_i, z2_i> + rho * mean_i z1_iᵀ C_t z1_i``.
    As lightly's TiCoLoss, the C_t in the quadratic term carries gradient
    through its batch part ``z1ᵀz1 / N``; the incoming ``cov`` is a constant.
    (lightly adds a constant 1, which changes neither gradient nor optimum.)
    With ``axis_name`` the batch is gathered and the loss, like the new C_t in
    ``aux['cov']``, is identical on every device.
    """
    z1 = _gather(_l2_normalize(z1), axis_name)
    z2 = _gather(_l2_normalize(z2), axis_name)
    inv = -jnp.mean(jnp.sum(z1 * z2, axis=-1))
    contrast, new_cov = _tico_contrast(z1, cov, beta)
    return inv + rho * contrast, {"invariance": inv, "covariance": contrast, "cov": new_cov}


def vicreg_tico_loss(z1, z2, cov, sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0, beta=0.9, eps=1e-4,
                     projections="raw", axis_name=None):
    """VICReg with its covariance term replaced by TiCo's covariance contrast.

    ``L = sim_coeff * s(Z, Z') + std_coeff * [v(Z) + v(Z')] / 2 + cov_coeff * (1/D) mean_i z1_iᵀ C_t z1_i``
    with ``C_t = beta C_{t-1} + (1 - beta) Z1ᵀZ1 / N``: VICReg's invariance and variance terms, and in place of
    its covariance term c(Z) the seed study's ``covcomponent = mean(sum((z1 @ C) * z1, dim=1))`` on the raw
    projections, divided by D as c(Z) is. For a filled C that is ``(1/D) sum_jk B_jk^2`` (B the batch's second
    moment): c(Z) uncentred, with its diagonal, against a running average of batches; without the 1/D it is D
    times VICReg's scale and training diverges.

    ``projections='normalized'`` takes TiCo's own contrast (its Eq. 4 term) on ẑ = z / ||z|| instead, in
    [1/D, 1], which needs a far larger ``cov_coeff`` to weigh as much. Both choices measured:
    docs/learning_check.md ("VICReg+TiCo: NaN within 20 steps").
    Gradient and multi-device handling as ``tico_loss``; the new C_t is ``aux['cov']``.
    """
    if projections not in ("normalized", "raw"):
        raise ValueError(f"vicreg_tico_loss: projections={projections!r}; use 'normalized' or 'raw'.")
    z1, z2 = _gather(_f32(z1), axis_name), _gather(_f32(z2), axis_name)
    inv = _vicreg_invariance(z1, z2)
    var = _vicreg_variance(z1, z2, eps)
    if projections == "raw":
        contrast, new_cov = _tico_contrast(z1, cov, beta)
        contrast = contrast / z1.shape[-1]
    else:
        contrast, new_cov = _tico_contrast(_l2_normalize(z1), cov, beta)
    loss = sim_coeff * inv + std_coeff * var + cov_coeff * contrast
    return loss, {"invariance": inv, "variance": var, "covariance": contrast, "cov": new_cov}


def _standardize(z, eps):
    """Per-dimension ``(z - mean) / sqrt(biased var + eps)``: BatchNorm without affine."""
    return (z - jnp.mean(z, axis=0)) * lax.rsqrt(jnp.var(z, axis=0) + eps)


def barlow_twins_loss(z1, z2, lambd=0.0051, eps=1e-5, axis_name=None):
    """Barlow Twins (Zbontar et al. 2021, Eqs. 1-2).

    With ``C = bn(z1)ᵀ bn(z2) / N`` the cross-correlation over the batch,
    ``L = sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2``. The standardisation
    and C are batch statistics, so with ``axis_name`` both views are gathered
    and the loss is identical on every device.
    """
    z1 = _standardize(_gather(_f32(z1), axis_name), eps)
    z2 = _standardize(_gather(_f32(z2), axis_name), eps)
    c = z1.T @ z2 / z1.shape[0]
    on_diag = jnp.sum(jnp.square(1.0 - jnp.diagonal(c)))
    off_diag = _off_diagonal_sq_sum(c)
    return on_diag + lambd * off_diag, {"on_diag": on_diag, "off_diag": off_diag}


def dino_initial_center(dim):
    """The centre DINO starts from: zeros, shape (dim,), float32 (official ``DINOLoss``: zeros(1, out_dim))."""
    return jnp.zeros((dim,), jnp.float32)


def dino_teacher_temperature(step, warmup_steps, warmup_temperature=0.04, final_temperature=0.07):
    """DINO's teacher temperature: linear from ``warmup_temperature`` at step 0 to ``final_temperature`` at
    ``warmup_steps``, then constant; float32 scalar, ``step`` (and ``warmup_steps``) may be traced.

    Official main_dino.py: ``warmup_teacher_temp=0.04``, ``teacher_temp=0.04`` (0.07 for the longer/larger
    runs; "above 0.07 is unstable"), ``warmup_teacher_temp_epochs=30``, per epoch as
    ``np.linspace(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs)`` and then ``teacher_temp``.
    Here it is per step (pass an epoch index to get the per-epoch schedule), and the final value is reached at
    ``step == warmup_steps`` rather than at ``warmup - 1`` as linspace's last point. ``warmup_steps <= 0``
    gives the final value from step 0; a negative step counts as step 0.
    """
    step = _f32(step)
    warmup = _f32(warmup_steps)
    frac = jnp.where(warmup > 0, jnp.clip(step / jnp.maximum(warmup, 1.0), 0.0, 1.0), 1.0)
    return _f32(warmup_temperature) + (_f32(final_temperature) - _f32(warmup_temperature)) * frac


def dino_loss(student_logits, teacher_logits, center, student_temperature=0.1, teacher_temperature=0.04,
              center_momentum=0.9, axis_name=None):
    """DINO's self-distillation cross-entropy with multi-crop (Caron et al. 2021, Sec. 3.1 and Algorithm 1).

    ``student_logits`` [V, B, K]: the student head's outputs for all V crops, the teacher's crops first (the 2
    global crops, then the local ones). ``teacher_logits`` [T, B, K]: the teacher head's outputs for the T
    global crops (T = 2 in DINO), stop-gradient. ``center`` [K] (a [1, K] centre is accepted too).
    ``teacher_temperature`` may be traced (see ``dino_teacher_temperature``).

    With ``p_t = softmax((t_i - c) / teacher_temperature)`` and
    ``log p_s = log_softmax(s_v / student_temperature)``,
    ``L = mean over pairs (i, v), v != i, of mean_b -sum_k p_t[i, b, k] log p_s[v, b, k]``: T (V - 1) pairs.
    The paper writes the sum over the pairs; the official ``DINOLoss.forward`` divides it by their number (and
    skips the pairs where "student and teacher operate on the same view"), as here.

    The new centre (the paper's centering, Sec. 3.1) ``c' = m c + (1 - m) mean_{i, b} t_i`` (mean over the T
    crops and the global batch; the official ``update_center`` all-reduces the batch sum and divides by the
    global count) is ``aux['center']``, shape [K], stop-gradient; the caller carries it to the next step. It is
    computed from the incoming ``teacher_logits``, after their use in this step's loss, as the official code does.

    Multi-device: the loss is a mean over local examples, so ``mean_d L_d == L_global`` (equal local batches);
    with ``axis_name`` the centre's batch mean is ``lax.pmean`` over devices, so ``aux['center']`` is the global
    one and identical (and typed invariant under ``shard_map``) on every device. The scalar diagnostics are
    over local examples (pmean them as the train step does its metrics):
    ``teacher_entropy`` mean H(p_t) (-> 0: one prototype dominates; -> log K: uniform collapse),
    ``kl`` mean over pairs of KL(p_t || p_s) = loss - teacher_entropy (-> 0 in either collapse, as in the
    paper's collapse study), ``teacher_max_prob`` mean max_k p_t (-> 1: one prototype dominates), and
    ``student_entropy`` mean H(p_s) over the V crops.
    """
    s = _f32(student_logits)
    t = lax.stop_gradient(_f32(teacher_logits))
    c = lax.stop_gradient(_f32(center)).reshape(-1)
    n_views, n_teacher = s.shape[0], t.shape[0]
    if s.ndim != 3 or t.ndim != 3 or s.shape[1:] != t.shape[1:] or c.shape != s.shape[-1:]:
        raise ValueError(f"dino_loss: student [V, B, K], teacher [T, B, K] and centre [K] expected, got "
                         f"{s.shape}, {t.shape}, {jnp.shape(center)}")
    if not 1 <= n_teacher <= n_views or n_views < 2:
        raise ValueError(f"dino_loss: need 1 <= T <= V and V >= 2 crops, got T={n_teacher}, V={n_views}")
    p_t = jax.nn.softmax((t - c) / teacher_temperature, axis=-1)
    log_p_s = jax.nn.log_softmax(s / student_temperature, axis=-1)
    # ce[i, v] = mean_b -sum_k p_t[i, b, k] log p_s[v, b, k], for every teacher crop i and student crop v.
    ce = -jnp.einsum("ibk,vbk->iv", p_t, log_p_s, precision=lax.Precision.HIGHEST) / s.shape[1]
    same_view = jnp.arange(n_teacher)[:, None] == jnp.arange(n_views)[None, :]
    loss = jnp.sum(jnp.where(same_view, 0.0, ce)) / (n_teacher * (n_views - 1))

    batch_center = jnp.mean(t, axis=(0, 1))
    if axis_name is not None:
        batch_center = lax.pmean(batch_center, axis_name)
    new_center = center_momentum * c + (1.0 - center_momentum) * batch_center

    def entropy(log_p):
        return jnp.mean(-jnp.sum(jnp.exp(log_p) * log_p, axis=-1))

    teacher_entropy = entropy(jax.nn.log_softmax((t - c) / teacher_temperature, axis=-1))
    aux = {
        "center": lax.stop_gradient(new_center),
        "teacher_entropy": teacher_entropy,
        "kl": lax.stop_gradient(loss) - teacher_entropy,
        "teacher_max_prob": jnp.mean(jnp.max(p_t, axis=-1)),
        "student_entropy": lax.stop_gradient(entropy(log_p_s)),
    }
    return loss, aux


def _psum(x, axis_name):
    return x if axis_name is None else lax.psum(x, axis_name)


def sinkhorn(scores, epsilon=0.05, iterations=3, axis_name=None):
    """SwAV's soft assignments of examples to prototypes (Caron et al. 2020, Sec. 3.1, Eq. 3; official
    ``distributed_sinkhorn`` in main_swav.py): ``scores`` [B, K], each example's scores against the K prototypes;
    returns Q [B, K], each row a distribution over prototypes, the columns (prototypes) equally used over the batch.

    Q = diag(u) exp(scores^T / epsilon) diag(v) (K x B) with u, v found by `iterations` Sinkhorn-Knopp steps: the
    matrix is scaled to sum 1, then each iteration scales its rows to 1/K and its columns to 1/B; the result is
    multiplied by B so that each example's assignment sums to 1. With ``axis_name`` the sums over examples (the
    total and the row sums) are ``psum``'d, so B is the global number of examples and the assignments equal those
    of one device holding the whole batch. The scores are shifted by their global maximum before ``exp``: the
    normalisations cancel the shift, and exp(s / epsilon) cannot overflow. Stop-gradient (the official code runs it
    under ``torch.no_grad``).
    """
    s = lax.stop_gradient(_f32(scores))
    peak = jnp.max(s) if axis_name is None else lax.pmax(jnp.max(s), axis_name)
    q = jnp.exp((s - peak) / epsilon).T  # K x B
    num_prototypes = q.shape[0]
    num_examples = _psum(q.shape[1], axis_name)
    q = q / _psum(jnp.sum(q), axis_name)
    for _ in range(iterations):
        q = q / _psum(jnp.sum(q, axis=1, keepdims=True), axis_name) / num_prototypes
        q = q / jnp.sum(q, axis=0, keepdims=True) / num_examples
    return (q * num_examples).T


def swav_loss(scores, queue_scores=None, use_queue=True, temperature=0.1, epsilon=0.05, iterations=3,
              axis_name=None):
    """SwAV's swapped prediction with multi-crop (Caron et al. 2020, Eq. 1-2; official main_swav.py).

    ``scores`` [C, B, K]: the prototype scores of C crops (z_c . c_k with unit z and prototypes), the two global
    crops first. For each global crop i in (0, 1) the codes q_i = Sinkhorn of its stop-gradient scores (with the
    queue: ``queue_scores[i]`` [L, K], the scores of past batches' projections against today's prototypes, put
    before the batch and dropped from the result) predict every other crop v:
    ``l(z_v, q_i) = -sum_k q_i[k] log softmax(z_v . c / temperature)[k]``, and
    ``L = mean over i of mean over the C - 1 crops v != i of mean_b l`` (the official loss: the sum over v divided
    by C - 1, averaged over the crops that get codes). ``use_queue`` (a traced bool: SwAV starts its queue after some
    epochs) picks the codes with or without the queue; both are computed only once, by ``lax.cond``.

    Multi-device: the loss is a mean over local examples (equal local batches), Sinkhorn's sums are global.
    aux: ``code_max`` the mean largest code entry (-> 1: hard assignments), ``code_entropy`` the mean entropy of
    the codes, ``prediction_entropy`` of the softmax predictions (-> log K: uniform).
    """
    s = _f32(scores)
    if s.ndim != 3 or s.shape[0] < 2:
        raise ValueError(f"swav_loss: scores [C >= 2 crops, B, K] expected, got {s.shape}")
    num_crops, batch = s.shape[0], s.shape[1]
    log_p = jax.nn.log_softmax(s / temperature, axis=-1)

    def codes(with_queue):
        out = []
        for i in range(2):
            crop = s[i] if not with_queue else jnp.concatenate([_f32(queue_scores[i]), s[i]])
            out.append(sinkhorn(crop, epsilon, iterations, axis_name)[-batch:])
        return jnp.stack(out)

    if queue_scores is None:
        q = codes(False)
    else:
        q = lax.cond(use_queue, lambda: codes(True), lambda: codes(False))
    q = lax.stop_gradient(q)
    # ce[i, v] = mean_b -sum_k q[i, b, k] log_p[v, b, k]
    ce = -jnp.einsum("ibk,vbk->iv", q, log_p, precision=lax.Precision.HIGHEST) / batch
    same_crop = jnp.arange(2)[:, None] == jnp.arange(num_crops)[None, :]
    loss = jnp.sum(jnp.where(same_crop, 0.0, ce)) / (2 * (num_crops - 1))
    aux = {
        "code_max": jnp.mean(jnp.max(q, axis=-1)),
        "code_entropy": jnp.mean(-jnp.sum(q * jnp.log(jnp.maximum(q, 1e-30)), axis=-1)),
        "prediction_entropy": lax.stop_gradient(jnp.mean(-jnp.sum(jnp.exp(log_p) * log_p, axis=-1))),
    }
    return loss, aux


def nnclr_nearest_neighbours(z, support, axis_name=None):
    """Each row's nearest neighbour in NNCLR's support set (Dwibedi et al. 2021, Eq. 2: ``NN(z, Q) = argmin_q
    ||z - q||``, for unit vectors the largest cosine; solo-learn's ``find_nn``: ``(z @ queue.T).max(dim=1)``).

    ``z`` [n, d] is normalised here; ``support`` [L, d] holds unit vectors. Returns (neighbours [n, d], their cosine
    with ẑ [n]), stop-gradient. With ``axis_name`` the support set is split among the devices (each passes its own
    rows, as a queue kept per device is): every device scores the gathered global batch against its rows, the best
    of all devices wins (``pmax``; on a tie the lowest device), its row reaches every device by ``psum``, and each
    device keeps its own examples' rows. The neighbours are those of one device holding the whole support set and
    the whole batch; no device gathers the support set.
    """
    z = _l2_normalize(lax.stop_gradient(z))
    support = lax.stop_gradient(_f32(support))
    queries = _gather(z, axis_name)
    sims = jnp.matmul(queries, support.T, precision=lax.Precision.HIGHEST)
    best = jnp.max(sims, axis=1)
    neighbours = support[jnp.argmax(sims, axis=1)]
    if axis_name is not None:
        top = lax.pmax(best, axis_name)
        device = lax.axis_index(axis_name)
        owner = lax.pmin(jnp.where(best == top, device, jnp.iinfo(jnp.int32).max), axis_name)
        neighbours = lax.psum(jnp.where((owner == device)[:, None], neighbours, 0.0), axis_name)
        start = _local_offset(z.shape[0], axis_name)
        neighbours = lax.dynamic_slice_in_dim(neighbours, start, z.shape[0])
        best = lax.dynamic_slice_in_dim(top, start, z.shape[0])
    return neighbours, best


def _nnclr_ctr(neighbours, p, temperature, axis_name):
    """solo-learn's ``nnclr_loss_func(nn, p)``: CE(n̂ p̂ᵀ / t) of this device's neighbours against the gathered
    predictions of the other view, the matching prediction (at this device's global offset) the positive."""
    keys = _gather(_l2_normalize(p), axis_name)
    labels = _local_offset(neighbours.shape[0], axis_name) + jnp.arange(neighbours.shape[0])
    ce, correct = _cross_entropy(_l2_normalize(neighbours) @ keys.T / temperature, labels)
    return jnp.mean(ce), jnp.mean(correct.astype(jnp.float32))


def nnclr_loss(p1, p2, z1, z2, support, temperature=0.2, axis_name=None):
    """NNCLR's symmetric loss (Dwibedi et al. 2021, Eq. 2-4; solo-learn's nnclr.py and ``nnclr_loss_func``).

    Each view's projection z_v is replaced by its nearest neighbour NN(z_v) in the support set (stop-gradient,
    `nnclr_nearest_neighbours`), and InfoNCE scores that neighbour against the other view's predictions over the
    global batch: ``L = [ctr(NN(z1), p2) + ctr(NN(z2), p1)] / 2`` with
    ``ctr(a, p) = mean_i -log exp(â_i·p̂_i / t) / sum_j exp(â_i·p̂_j / t)`` (solo-learn's current form: the
    predictions gathered over devices as SimCLR's keys, the labels at this device's offset; the paper also adds a
    term normalised over the neighbours instead of the predictions, which solo-learn leaves out, as here). The gradient reaches the predictions only. Mean over local
    anchors: ``mean_d L_d == L_global``.

    aux: ``loss_12``, ``loss_21``, ``accuracy`` (the positive's rank-1 rate), ``neighbour_similarity`` (mean
    cosine of ẑ to its neighbour: -> 1 as the support set fills with near copies of today's batch), and
    ``newest`` [n, d]: this device's unit ẑ1, stop-gradient, which the method enqueues (solo-learn enqueues view
    1's projections after finding the neighbours).
    """
    nn1, sim1 = nnclr_nearest_neighbours(z1, support, axis_name)
    nn2, sim2 = nnclr_nearest_neighbours(z2, support, axis_name)
    l12, acc12 = _nnclr_ctr(nn1, p2, temperature, axis_name)
    l21, acc21 = _nnclr_ctr(nn2, p1, temperature, axis_name)
    aux = {"loss_12": l12, "loss_21": l21, "accuracy": 0.5 * (acc12 + acc21),
           "neighbour_similarity": 0.5 * (jnp.mean(sim1) + jnp.mean(sim2)),
           "newest": _l2_normalize(lax.stop_gradient(z1))}
    return 0.5 * (l12 + l21), aux


def _moco_v2_ctr(q, k, negatives, temperature):
    """solo-learn's ``mocov2plus_loss_func(query, key, queue)``: CE over [q̂·k̂, q̂·negatives] / t with the key (the
    same example's other view, from the EMA encoder) first and the positive."""
    pos = jnp.sum(q * k, axis=-1, keepdims=True)
    neg = jnp.matmul(q, negatives.T, precision=lax.Precision.HIGHEST)
    logits = jnp.concatenate([pos, neg], axis=1) / temperature
    ce, correct = _cross_entropy(logits, jnp.zeros((q.shape[0],), jnp.int32))
    return jnp.mean(ce), jnp.mean(correct.astype(jnp.float32)), jnp.mean(pos), jnp.mean(neg)


def moco_v2_loss(q1, q2, k1, k2, queue, temperature=0.2, axis_name=None):
    """MoCo v2's InfoNCE (He et al. 2020, Eq. 1; Chen et al. 2020 "MoCo v2"), symmetrised as solo-learn's
    mocov2plus.py: ``L = [ctr(q1, k2, queue[1]) + ctr(q2, k1, queue[0])] / 2`` with
    ``ctr(q, k, Q) = mean_i -log exp(q̂_i·k̂_i / t) / (exp(q̂_i·k̂_i / t) + sum_j exp(q̂_i·Q_j / t))``: each query's
    positive is the EMA encoder's key of the other view of the same image (stop-gradient), its negatives the queue
    of past keys of that view (``queue`` [2, K, d], unit rows, stop-gradient); no in-batch negatives.

    Multi-device: every device holds the whole queue (the same on each), so the loss is a mean over local queries
    and ``mean_d L_d == L_global``. aux: ``loss_12``, ``loss_21``, ``accuracy`` (the positive scored above every
    negative), and ``newest`` [2, B, d]: the unit keys of both views gathered over devices (global order), which
    the method writes into the queue (solo-learn: ``torch.stack((gather(k1), gather(k2)))``).
    """
    q1, q2 = _l2_normalize(q1), _l2_normalize(q2)
    k1, k2 = _l2_normalize(lax.stop_gradient(k1)), _l2_normalize(lax.stop_gradient(k2))
    queue = lax.stop_gradient(_f32(queue))
    l12, acc12, pos12, neg12 = _moco_v2_ctr(q1, k2, queue[1], temperature)
    l21, acc21, pos21, neg21 = _moco_v2_ctr(q2, k1, queue[0], temperature)
    aux = {"loss_12": l12, "loss_21": l21, "accuracy": 0.5 * (acc12 + acc21),
           "positive_similarity": 0.5 * (pos12 + pos21), "negative_similarity": 0.5 * (neg12 + neg21),
           "newest": jnp.stack([_gather(k1, axis_name), _gather(k2, axis_name)])}
    return 0.5 * (l12 + l21), aux


def mae_loss(pred, target_patches, mask, norm_pix=True, eps=1e-6):
    """MAE's reconstruction loss (He et al. 2022; the official `forward_loss`): the mean squared error per patch
    between the decoder's pixels `pred` [B, L, P] and `target_patches` [B, L, P] (`mae.patchify` of the input),
    averaged over the masked patches only (`mask` [B, L], 1 = masked). With `norm_pix` (the paper's default,
    `norm_pix_loss`) each target patch is standardised by its own mean and variance, (t - mean) / sqrt(var + eps),
    the variance unbiased as torch's `Tensor.var`. Unmasked patches' predictions get no gradient.

    Per device it is the mean over this device's examples; every example masks as many patches, so the mean over
    devices of the per-device losses is the global batch's loss and no `axis_name` is needed."""
    pred, target, mask = _f32(pred), _f32(target_patches), _f32(mask)
    if norm_pix:
        mean = jnp.mean(target, axis=-1, keepdims=True)
        var = jnp.var(target, axis=-1, keepdims=True, ddof=1)
        target = (target - mean) * lax.rsqrt(var + eps)
    per_patch = jnp.mean(jnp.square(pred - target), axis=-1)
    loss = jnp.sum(per_patch * mask) / jnp.sum(mask)
    visible = jnp.sum(per_patch * (1.0 - mask)) / jnp.maximum(jnp.sum(1.0 - mask), 1.0)
    return loss, {"masked_patch_mse": loss, "visible_patch_mse": lax.stop_gradient(visible),
                  "mask_fraction": jnp.mean(mask)}
