"""Collapse diagnostics of a representation, for the learning check: SimSiam's normalised standard deviation of
the outputs and the effective rank (RankMe) of the backbone features."""
import jax.numpy as jnp
import numpy as np


def normalized_std(z):
    """SimSiam's collapse indicator (Chen & He 2021, Sec. 4.1): the per-channel standard deviation over the batch
    of the L2-normalised outputs, averaged over channels; about 1/sqrt(d) when healthy, 0 when collapsed."""
    z = z.astype(jnp.float32)
    z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
    return jnp.mean(jnp.std(z, axis=0))


def effective_rank(features, eps=1e-7):
    """RankMe (Garrido et al. 2023, Eq. 1): ``exp(-sum_k p_k log p_k)`` with ``p_k = s_k / sum(s) + eps`` over the
    singular values ``s`` of the [N, D] feature matrix. Between 1 (every example on one line: collapse) and D;
    it needs no labels, and a backbone whose rank falls while its loss falls is collapsing dimensionally.
    On the host in float64: XLA's CPU fusions reject the SVD's layouts under our CPU flags."""
    s = np.linalg.svd(np.asarray(features, np.float64), compute_uv=False)
    p = s / np.sum(s) + eps
    return float(np.exp(-np.sum(p * np.log(p))))
