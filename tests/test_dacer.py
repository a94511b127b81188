"""DACER: VP schedule and reverse step against the formulas, samplers on a toy, GMM entropy, update."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import neurosurgery as ns
from agents import Batch, NetworkConfig
from agents._dacer import DACER, DACERConfig
from agents._diffusion import ddpm_sample, ode_sample, reverse_step, vp_alpha_bar, vp_schedule
from agents._gmm import GMM, fit_gmm, gmm_entropy

SMALL = dict(batch_size=4, denoiser_width=8, critic=NetworkConfig(width=8, activation="gelu"))
SMALL |= dict(entropy_every=4, entropy_states=2, entropy_samples=40, gmm_iters=10)


def member(tree, i):
    return jax.tree.map(lambda x: x[i] if eqx.is_array(x) else x, tree)


def test_vp_schedule_matches_formula():
    T, b0, b1 = 20, 0.1, 10.0
    sch = vp_schedule(T, b0, b1)
    i = np.arange(1, T + 1)
    betas = 1 - np.exp(-b0 / T - 0.5 * (b1 - b0) * (2 * i - 1) / T**2)
    np.testing.assert_allclose(sch.betas, betas, rtol=1e-5)
    np.testing.assert_allclose(sch.alpha_bars, np.cumprod(1 - betas), rtol=1e-5)
    np.testing.assert_allclose(sch.alpha_bars_prev[1:], sch.alpha_bars[:-1])
    # the discrete schedule is the VP SDE integrated exactly over each step
    s = jnp.asarray(i / T, jnp.float32)
    np.testing.assert_allclose(sch.alpha_bars, vp_alpha_bar(s, b0, b1), rtol=1e-5)
    np.testing.assert_allclose(sch.alpha_bars[-1], math.exp(-(b0 + (b1 - b0) / 2)), rtol=1e-5)


@pytest.mark.parametrize("i", [0, 7, 19])
def test_reverse_step_matches_formula(i):
    sch = vp_schedule()
    eps_fn = lambda x, t: 0.3 * x + 0.01 * t
    x = jnp.asarray([0.4, -1.2, 2.5], jnp.float32)
    noise = jnp.asarray([0.5, -0.1, 1.0], jnp.float32)
    got = reverse_step(sch, eps_fn, x, jnp.int32(i), noise)
    beta, ab = float(sch.betas[i]), float(sch.alpha_bars[i])
    ab_prev = float(sch.alpha_bars_prev[i])
    xn, zn = np.asarray(x, np.float64), np.asarray(noise, np.float64)
    eps = 0.3 * xn + 0.01 * i
    x0 = np.clip((xn - math.sqrt(1 - ab) * eps) / math.sqrt(ab), -1, 1)
    mean = (math.sqrt(ab_prev) * beta * x0 + math.sqrt(1 - beta) * (1 - ab_prev) * xn) / (1 - ab)
    var = beta * (1 - ab_prev) / (1 - ab)
    want = mean + (math.sqrt(var) * zn if i > 0 else 0.0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def gaussian_eps(mean: float, std: float, T: int):
    """The exact noise prediction E[ε | x_s] for data N(mean, std²) at step index t."""

    def eps_fn(x, t):
        ab = vp_alpha_bar((t + 1.0) / T, 0.1, 10.0)
        return jnp.sqrt(1 - ab) * (x - jnp.sqrt(ab) * mean) / (ab * std**2 + 1 - ab)

    return eps_fn


def test_ode_and_ddpm_samplers_recover_a_gaussian():
    """Both samplers with the analytic noise predictor of N(0.2, 0.4²) sample mean and std.

    The DDPM chain with the posterior variance β̃ under-disperses with few steps (std 0.32 at 20
    steps, 0.37 at 100), so it is checked at 100 steps; the ODE at DACER's 20-step schedule.
    """
    m, sd, n = 0.2, 0.4, 4000
    k1, k2 = jax.random.split(jax.random.key(0))
    x_T = jax.random.normal(k1, (n, 1))
    sch = vp_schedule(100)
    noise = jax.random.normal(k2, (n, 100, 1))
    ddpm = jax.jit(jax.vmap(lambda x, z: ddpm_sample(sch, gaussian_eps(m, sd, 100), x, z)))
    d = np.asarray(ddpm(x_T, noise))
    sch20 = vp_schedule(20)
    ode = jax.jit(jax.vmap(lambda x: ode_sample(sch20, gaussian_eps(m, sd, 20), x, steps=10)))
    o = np.asarray(ode(x_T))
    assert abs(d.mean() - m) < 0.03 and abs(d.std() - sd) < 0.05, (d.mean(), d.std())
    assert abs(o.mean() - m) < 0.03 and abs(o.std() - sd) < 0.03, (o.mean(), o.std())
    assert abs(d.mean() - o.mean()) < 0.03 and abs(d.std() - o.std()) < 0.05


@pytest.fixture(scope="module")
def mixture():
    rng = np.random.default_rng(0)
    means = np.array([[-2.0, 0.0], [2.0, 1.0], [0.0, 4.0]])
    covs = np.array([[[0.3, 0.1], [0.1, 0.2]], [[0.2, -0.05], [-0.05, 0.4]], [[0.5, 0], [0, 0.1]]])
    weights = np.array([0.5, 0.3, 0.2])
    comp = rng.choice(3, 3000, p=weights)
    x = np.stack([rng.multivariate_normal(means[c], covs[c]) for c in comp])
    return x, weights, means, covs


def np_log_pdf(x, mean, cov):
    diff = x - mean
    sol = np.linalg.solve(cov, diff.T).T
    return -0.5 * np.sum(diff * sol, 1) - 0.5 * np.log(np.linalg.det(2 * np.pi * cov))


def test_gmm_em_recovers_the_mixture_and_its_entropy(mixture):
    x, weights, means, covs = mixture
    gmm = jax.jit(fit_gmm)(jnp.asarray(x, jnp.float32), jax.random.key(0))
    order = [int(np.argmin(np.sum((np.asarray(gmm.means) - m) ** 2, 1))) for m in means]
    assert sorted(order) == [0, 1, 2]
    np.testing.assert_allclose(np.asarray(gmm.weights)[order], weights, atol=0.03)
    np.testing.assert_allclose(np.asarray(gmm.means)[order], means, atol=0.06)
    np.testing.assert_allclose(np.asarray(gmm.covs)[order], covs, atol=0.05)
    # Monte-Carlo entropy of the true mixture from the same samples
    dens = sum(
        w * np.exp(np_log_pdf(x, m, c)) for w, m, c in zip(weights, means, covs, strict=True)
    )
    mc = -np.mean(np.log(dens))
    assert abs(float(gmm_entropy(gmm)) - mc) < 0.05, (float(gmm_entropy(gmm)), mc)


def test_gmm_entropy_of_one_gaussian_is_exact():
    cov = np.array([[0.5, 0.2], [0.2, 0.3]])
    one = GMM(jnp.asarray([1.0, 0.0], jnp.float32), jnp.zeros((2, 2), jnp.float32),
              jnp.asarray(np.stack([cov, np.eye(2)]), jnp.float32))  # fmt: skip
    want = 0.5 * np.log(np.linalg.det(2 * np.pi * np.e * cov))
    np.testing.assert_allclose(float(gmm_entropy(one)), want, rtol=1e-5)


@pytest.fixture(scope="module")
def dacer():
    return DACER(DACERConfig(**SMALL), 3, 2)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    f = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
    terminated = jnp.asarray([0.0, 1.0, 0.0, 0.0], jnp.float32)
    return Batch(f(4, 3), jnp.tanh(f(4, 2)), f(4), f(4, 3), terminated)


@pytest.fixture(scope="module")
def seeds(dacer):
    return jax.jit(jax.vmap(dacer.init))(jax.random.split(jax.random.key(1), 2))


def test_update_cycle_under_jit_and_vmap_over_seeds(dacer, seeds, batch):
    def cycle(s, k):
        k1, k2, k3 = jax.random.split(k, 3)
        s, m0 = dacer.update(s, batch, k1, 0)
        s, m1 = dacer.update(s, batch, k2, 1)
        s, m2 = dacer.scheduled(s, batch, k3, jnp.int32(2))  # unbatched count: a real branch
        return s, (m0, m1, m2)

    run = jax.jit(jax.vmap(cycle))
    new, (m0, m1, m2) = run(seeds, jax.random.split(jax.random.key(3), 2))
    assert "actor_loss" not in m0 and "actor_loss" in m1  # the policy waits for phase 1
    for m in (m0, m1, m2):
        assert all(bool(jnp.all(jnp.isfinite(v))) for v in m.values())
    assert np.all(np.asarray(new.updates) == 2)
    # α moved against the gap to the target entropy (the estimate at init is the target itself)
    np.testing.assert_allclose(np.asarray(m1["alpha"]), 3.0, rtol=1e-6)
    ent = np.asarray(m2["entropy_estimate"])
    assert np.all(ent != dacer.target_entropy) and not np.allclose(ent[0], ent[1])
    new2, (_, m1b, _) = run(new, jax.random.split(jax.random.key(4), 2))
    assert np.all((np.asarray(m1b["alpha"]) < 3.0) == (ent > dacer.target_entropy))
    # the denoiser was trained through the chain: its first layer changed
    w0 = np.asarray(seeds.actor.mlp.layers[0].weight)
    assert not np.allclose(np.asarray(new2.actor.mlp.layers[0].weight), w0)


def test_ode_sampler_agent_acts_and_differentiates(seeds, batch):
    ode = DACER(DACERConfig(**SMALL, sampler="ode"), 3, 2)

    @jax.jit
    def act_and_grad(state):
        act = ode.act(state, batch.obs, jax.random.key(0), False)
        probe = ode.actor_probe(state, batch, jax.random.key(1))
        grads = eqx.filter_grad(lambda a: probe.loss(a, *(x[0] for x in probe.inputs)))(probe.model)
        return act, grads.mlp.layers[0].weight

    act, grad = act_and_grad(member(seeds, 0))
    assert act.shape == (4, 2) and bool(jnp.all(jnp.abs(act) <= 1.0))
    assert float(jnp.sum(jnp.abs(grad))) > 0


class Outputs(eqx.Module):
    """A stand-in for the twin critics that returns given (mean, σ) whatever the input."""

    mean: jax.Array
    std: jax.Array

    def __call__(self, obs, action):
        return self.mean, self.std


def test_critic_gradient_is_dsac_t(dacer, seeds, batch):
    """∂L/∂μ = −ω(y_q − μ)/σ², ∂L/∂σ = −ω(σ² − (y_b − μ)²)/σ³ per critic (DSAC-T), with
    ω = batch-mean σ² and y_b the sampled target clipped to μ ± 3·(batch-mean σ)."""
    state = member(seeds, 0)
    probe = dacer.critic_probe(state, batch, jax.random.key(2))
    obs, action, yq, yz = (x[0] for x in probe.inputs)
    stds = jax.vmap(lambda o, a: eqx.filter_vmap(lambda c: c(o, a))(state.critic))(
        batch.obs, batch.action
    )[1]
    stds = np.asarray(stds, np.float64)
    omega, bound = np.mean(stds**2, 0), 3.0 * np.mean(stds, 0)
    m, sd = np.array([0.3, -0.2]), np.array([0.5, 0.05])
    outputs = Outputs(jnp.asarray(m, jnp.float32), jnp.asarray(sd, jnp.float32))
    grads = jax.grad(lambda o: probe.loss(o, obs, action, yq, yz))(outputs)
    yb = m + np.clip(float(yz) - m, -bound, bound)
    np.testing.assert_allclose(grads.mean, -omega * (float(yq) - m) / (sd**2 + 1e-6), rtol=1e-3)
    np.testing.assert_allclose(
        grads.std, -omega * (sd**2 - (yb - m) ** 2) / (sd**3 + 1e-6), rtol=1e-3
    )


def test_validation():
    with pytest.raises(ValueError, match="sampler"):
        DACERConfig(sampler="sde").validate()
    with pytest.raises(ValueError, match="entropy_states"):
        DACERConfig(batch_size=8).validate()
    DACERConfig().validate()


def test_anatomy_of_the_agents_denoiser(seeds):
    den = member(seeds, 0).actor
    obs, act, emb, w = 3, 2, 16, SMALL["denoiser_width"]
    anatomy = ns.anatomy(den, jnp.zeros(obs), jnp.zeros(act), jnp.float32(4.0))
    assert anatomy.names == ("time1", "time2", "mlp.layers[0]", "mlp.layers[1]", "mlp.layers[2]",
                             "mlp.layers[3]")  # fmt: skip
    t1, t2, m0 = anatomy[0], anatomy[1], anatomy[2]
    assert t1.unit_shape == (2 * emb,) and t2.unit_shape == (emb,) and m0.unit_shape == (w,)
    out = {s.path: s.element_owner() for s in t2.outgoing}
    # the embedding enters the MLP after obs and the noisy action: columns obs+act … obs+act+15
    want = np.full((w, obs + act + emb), -1)
    want[:, obs + act :] = np.arange(emb)[None, :]
    np.testing.assert_array_equal(out[".mlp.layers[0].weight"], want)
    assert {s.path for s in t1.outgoing} == {".time2.weight"}
    assert anatomy["mlp.layers[3]"].output and not any(g.shared for g in anatomy)


def test_denoiser_surgery_target_carries_the_chain_gradient(dacer, seeds, batch):
    """The per-call linearised loss has the same parameter gradient as the loss through the
    whole chain (same noise), so per-unit gradient scores see every call's share."""
    state, key = member(seeds, 0), jax.random.key(7)

    @jax.jit
    def both(state):
        target = dacer._denoiser_target(state, batch, key)
        probe = dacer.actor_probe(state, batch, key)

        def linearised(model):
            return target.loss(
                jax.vmap(target.call, in_axes=(None, 0, 0, 0))(model, *target.inputs)
            )

        def through_chain(model):
            per = jax.vmap(probe.loss, in_axes=(None, 0, 0))(model, *probe.inputs)
            return jnp.mean(per)

        return eqx.filter_grad(linearised)(state.actor), eqx.filter_grad(through_chain)(state.actor)

    got, want = both(state)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=2e-3, atol=1e-6)


def test_surgery_step_scores_and_resets_critic_and_denoiser(dacer, seeds, batch):
    from types import SimpleNamespace

    from agents._neurons import neuron_step

    config = SimpleNamespace(reset="regrama", reset_tau=0.5, reset_max_fraction=1.0,
                             reset_networks=("critic", "actor"))  # fmt: skip
    state = member(seeds, 0)
    new, metrics = jax.jit(lambda s, k: neuron_step(dacer, config, s, batch, k))(
        state, jax.random.key(0)
    )
    for name in config.reset_networks:
        assert f"surgery/{name}/grama" in metrics and f"surgery/{name}/reset" in metrics
    assert "surgery/actor/grama/time1" in metrics
    assert jax.tree.structure(new) == jax.tree.structure(state)
