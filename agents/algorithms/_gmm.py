"""Gaussian mixtures fitted by EM in JAX (jittable, vmappable), and DACER's entropy estimate.

DACER has no tractable log π; it fits a K-component full-covariance mixture to actions sampled
at one state and takes H ≈ H(weights) + Σ_k w_k H(N_k), exact when the components do not overlap
and an upper bound otherwise.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray


class GMM(NamedTuple):
    weights: Float[Array, " k"]
    means: Float[Array, "k d"]
    covs: Float[Array, "k d d"]


def gmm_log_densities(gmm: GMM, x: Float[Array, "n d"]) -> Float[Array, "n k"]:
    """log w_k + log N(x | μ_k, Σ_k) for every point and component."""
    d = x.shape[-1]
    chol = jnp.linalg.cholesky(gmm.covs)  # [k, d, d]

    def component(mean, L):
        z = jax.scipy.linalg.solve_triangular(L, (x - mean).T, lower=True)  # [d, n]
        log_det = 2.0 * jnp.sum(jnp.log(jnp.diagonal(L)))
        return -0.5 * jnp.sum(z**2, axis=0) - 0.5 * log_det - 0.5 * d * math.log(2 * math.pi)

    return jax.vmap(component, out_axes=1)(gmm.means, chol) + jnp.log(gmm.weights)


def _farthest_points(x: Array, k: int, key: PRNGKeyArray) -> Array:
    """k initial means: a random point, then repeatedly the point farthest from those chosen."""
    first = x[jax.random.randint(key, (), 0, x.shape[0])]
    means = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(first)
    dist = jnp.sum((x - first) ** 2, axis=-1)
    for j in range(1, k):
        nxt = x[jnp.argmax(dist)]
        means = means.at[j].set(nxt)
        dist = jnp.minimum(dist, jnp.sum((x - nxt) ** 2, axis=-1))
    return means


def fit_gmm(
    x: Float[Array, "n d"],
    key: PRNGKeyArray,
    components: int = 3,
    iters: int = 50,
    reg: float = 1e-4,
) -> GMM:
    """Maximum-likelihood mixture by `iters` EM steps (fixed count: jittable); `reg`·I is added
    to every covariance so that collapsed components (clipped actions) stay invertible."""
    n, d = x.shape
    eye = jnp.eye(d, dtype=x.dtype)
    centred = x - jnp.mean(x, axis=0)
    cov = centred.T @ centred / n + reg * eye
    gmm = GMM(
        jnp.full((components,), 1.0 / components, x.dtype),
        _farthest_points(x, components, key),
        jnp.broadcast_to(cov, (components, d, d)),
    )

    def em_step(_, gmm: GMM) -> GMM:
        log_p = gmm_log_densities(gmm, x)
        resp = jnp.exp(log_p - jax.scipy.special.logsumexp(log_p, axis=1, keepdims=True))
        nk = jnp.sum(resp, axis=0) + 1e-8  # [k]
        means = resp.T @ x / nk[:, None]
        diff = x[None, :, :] - means[:, None, :]  # [k, n, d]
        covs = jnp.einsum("nk,kni,knj->kij", resp, diff, diff) / nk[:, None, None] + reg * eye
        return GMM(nk / jnp.sum(nk), means, covs)

    return jax.lax.fori_loop(0, iters, em_step, gmm)


def gmm_entropy(gmm: GMM) -> Float[Array, ""]:
    """H(weights) + Σ_k w_k · ½ log det(2πe Σ_k)."""
    d = gmm.means.shape[-1]
    _, log_det = jnp.linalg.slogdet(gmm.covs)
    h_components = 0.5 * (d * math.log(2 * math.pi * math.e) + log_det)
    w = gmm.weights
    h_weights = -jnp.sum(jnp.where(w > 0, w * jnp.log(jnp.maximum(w, 1e-30)), 0.0))
    return h_weights + jnp.sum(w * h_components)
