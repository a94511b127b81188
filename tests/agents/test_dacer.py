"""DACER: VP schedule and reverse step against the formulas, samplers on a toy, GMM entropy, update."""

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import neurosurgery as ns
from agents import DACER, DACERConfig, NetworkConfig, fit_gmm, gmm_entropy, vp_schedule
from agents.algorithms._diffusion import (
    ddpm_sample,
    ddpm_sample_calls,
    ode_sample,
    ode_sample_calls,
    reverse_step,
    vp_alpha_bar,
)
from agents.algorithms._gmm import GMM
from agents.networks import sinusoidal_embedding

#: tests compile more than they run: less LLVM optimisation, same programs
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

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


@pytest.mark.parametrize("variance", ["posterior", "beta"])
@pytest.mark.parametrize("i", [0, 7, 19])
def test_reverse_step_matches_formula(i, variance):
    sch = vp_schedule()
    eps_fn = lambda x, t: 0.3 * x + 0.01 * t
    x = jnp.asarray([0.4, -1.2, 2.5], jnp.float32)
    noise = jnp.asarray([0.5, -0.1, 1.0], jnp.float32)
    got = reverse_step(sch, eps_fn, x, jnp.int32(i), noise, variance=variance)
    beta, ab = float(sch.betas[i]), float(sch.alpha_bars[i])
    ab_prev = float(sch.alpha_bars_prev[i])
    xn, zn = np.asarray(x, np.float64), np.asarray(noise, np.float64)
    eps = 0.3 * xn + 0.01 * i
    x0 = np.clip((xn - math.sqrt(1 - ab) * eps) / math.sqrt(ab), -1, 1)
    mean = (math.sqrt(ab_prev) * beta * x0 + math.sqrt(1 - beta) * (1 - ab_prev) * xn) / (1 - ab)
    var = beta * (1 - ab_prev) / (1 - ab) if variance == "posterior" else beta
    want = mean + (math.sqrt(var) * zn if i > 0 else 0.0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def gaussian_eps(mean: float, std: float, T: int):
    """The exact noise prediction E[ε | x_s] for data N(mean, std²) at step index t."""

    def eps_fn(x, t):
        ab = vp_alpha_bar((t + 1.0) / T, 0.1, 10.0)
        return jnp.sqrt(1 - ab) * (x - jnp.sqrt(ab) * mean) / (ab * std**2 + 1 - ab)

    return eps_fn


def chain_coefficients(m: float, sd: float, T: int, variance: str):
    """Per step t = T−1 … 0 of the DDPM chain for data N(m, sd²) with the exact noise predictor
    and no clipping: x_(t−1) = gain·x_t + offset + noise_std·z_t. Each step is affine in x (the
    posterior mean of x0 is), so this is the chain in closed form (float64, NumPy only)."""
    i = np.arange(T)
    betas = 1 - np.exp(-0.1 / T - 0.5 * 9.9 * (2 * i + 1) / T**2)
    ab = np.cumprod(1 - betas)
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    out = []
    for t in range(T - 1, -1, -1):
        b, a, ap = betas[t], ab[t], ab_prev[t]
        k = math.sqrt(a) * sd**2 / (a * sd**2 + 1 - a)  # E[x0 | x] = m + k (x − √a m)
        c0, c1 = math.sqrt(ap) * b / (1 - a), math.sqrt(1 - b) * (1 - ap) / (1 - a)
        var = (b * (1 - ap) / (1 - a) if variance == "posterior" else b) if t > 0 else 0.0
        out.append((t, c0 * k + c1, c0 * (m - k * math.sqrt(a) * m), math.sqrt(var)))
    return out


def closed_form_chain(m: float, sd: float, T: int, variance: str) -> tuple[float, float]:
    """Mean and std of the chain's output when x_T ~ N(0, 1)."""
    mu, var = 0.0, 1.0
    for _, gain, offset, noise_std in chain_coefficients(m, sd, T, variance):
        mu, var = gain * mu + offset, gain**2 * var + noise_std**2
    return mu, math.sqrt(var)


def test_closed_form_chain_at_many_steps_is_the_data():
    for variance in ("posterior", "beta"):
        mu, sd = closed_form_chain(0.2, 0.4, 2000, variance)
        assert abs(mu - 0.2) < 1e-3 and abs(sd - 0.4) < 3e-3, (variance, mu, sd)


TOY_MEAN, TOY_STD, TOY_N = 0.2, 0.4, 4000


@pytest.fixture(scope="module")
def toy_noise():
    k1, k2 = jax.random.split(jax.random.key(0))
    return jax.random.normal(k1, (TOY_N, 1)), jax.random.normal(k2, (TOY_N, 100, 1))


@pytest.mark.parametrize("variance", ["posterior", "beta"])
def test_ddpm_sampler_is_the_closed_form_chain(variance, toy_noise):
    """With the exact noise predictor of N(0.2, 0.4²), every sample of the 20-step chain is the
    closed-form one. Its std is 0.322 with β̃ (0.377 at 100 steps) and 0.416 with β: the
    narrowing is the variance choice at few steps, not a defect of the schedule or the step."""
    x_T, noise = toy_noise
    T = 20
    sch, eps_fn = vp_schedule(T), gaussian_eps(TOY_MEAN, TOY_STD, T)
    run = jit(jax.vmap(lambda x, z: ddpm_sample(sch, eps_fn, x, z, False, variance)))
    got = np.asarray(run(x_T, noise[:, :T]), np.float64)
    x, z = np.asarray(x_T, np.float64), np.asarray(noise, np.float64)
    for t, gain, offset, noise_std in chain_coefficients(TOY_MEAN, TOY_STD, T, variance):
        x = gain * x + offset + noise_std * z[:, t]
    np.testing.assert_allclose(got, x, atol=2e-5)
    want = {"posterior": (0.322, 0.377), "beta": (0.416, 0.405)}[variance]
    for steps, sd in zip((20, 100), want, strict=True):
        assert abs(closed_form_chain(TOY_MEAN, TOY_STD, steps, variance)[1] - sd) < 5e-4
    # clipping x̂0 to [−1, 1] (the default) trims the tails a little: the data reach 1 at 2σ
    clipped = jit(jax.vmap(lambda x, z: ddpm_sample(sch, eps_fn, x, z, True, variance)))
    c = np.asarray(clipped(x_T, noise[:, :T]))
    assert np.all(np.abs(c) <= 1) and got.std() - 0.02 < c.std() <= got.std() + 1e-6


def test_ode_sampler_is_the_closed_form_flow_and_near_the_chain(toy_noise):
    """For Gaussian data the probability flow is affine: from s = 1 to s = 1/T it maps x to
    √ᾱ_e m + √(ᾱ_e σ² + 1 − ᾱ_e)·(x − √ᾱ_1 m)/√(ᾱ_1 σ² + 1 − ᾱ_1), then takes the posterior mean
    of x0. Heun's error shrinks as the square of the step (10 steps: within 0.03 per sample,
    std 0.391 against 0.385 here; 100 steps: within 1e-3). Against the discrete sampler at the
    same noise: at T = 100 both approach the data."""
    x_T, noise = toy_noise
    m, sd, T = TOY_MEAN, TOY_STD, 20
    sch, eps_fn = vp_schedule(T), gaussian_eps(m, sd, T)
    a1, ae = math.exp(-(0.1 + 4.95)), float(sch.alpha_bars[0])
    x = np.asarray(x_T, np.float64)
    xe = math.sqrt(ae) * m + math.sqrt(ae * sd**2 + 1 - ae) * (x - math.sqrt(a1) * m) / math.sqrt(
        a1 * sd**2 + 1 - a1
    )
    want = m + math.sqrt(ae) * sd**2 / (ae * sd**2 + 1 - ae) * (xe - math.sqrt(ae) * m)
    for steps, tol in ((10, 0.03), (100, 1e-3)):
        ode = jit(jax.vmap(lambda x, n=steps: ode_sample(sch, eps_fn, x, n, clip=False)))
        np.testing.assert_allclose(np.asarray(ode(x_T)), want, atol=tol)
    sch, eps_fn = vp_schedule(100), gaussian_eps(m, sd, 100)
    o = np.asarray(jit(jax.vmap(lambda x: ode_sample(sch, eps_fn, x, 10, clip=False)))(x_T))
    d = np.asarray(jit(jax.vmap(lambda x, z: ddpm_sample(sch, eps_fn, x, z, False)))(x_T, noise))
    assert abs(d.mean() - o.mean()) < 0.02 and abs(d.std() - o.std()) < 0.04, (d.std(), o.std())


def test_written_out_heun_steps_are_the_diffrax_solve():
    sch = vp_schedule(20)
    eps_fn = gaussian_eps(TOY_MEAN, 0.3, 20)
    x_T = jnp.asarray([1.3, -0.4, 2.2], jnp.float32)
    want = ode_sample(sch, eps_fn, x_T, steps=6)
    got, xs, ts = ode_sample_calls(sch, lambda x, t, j: eps_fn(x, t), x_T, steps=6)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert xs.shape == (13, 3) and ts.shape == (13,)
    s = 1 - np.arange(7) * (1 - 1 / 20) / 6  # Heun's stages sit at s_k and s_(k+1)
    want_t = np.concatenate([np.stack([s[:-1], s[1:]], 1).reshape(-1) * 20 - 1, [0.0]])
    np.testing.assert_allclose(ts, want_t, atol=1e-4)
    np.testing.assert_allclose(xs[0], x_T)


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
    gmm = jit(fit_gmm)(jnp.asarray(x, jnp.float32), jax.random.key(0))
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


def test_gmm_em_step_and_entropy_match_numpy(mixture):
    """One EM step from the initial mixture, and the entropy H(w) + Σ w_k ½ log det(2πe Σ_k),
    recomputed in NumPy (float64)."""
    x = mixture[0][:500]
    xj, key = jnp.asarray(x, jnp.float32), jax.random.key(3)
    g0, g1 = (fit_gmm(xj, key, 3, iters) for iters in (0, 1))
    w, mu, cov = (np.asarray(a, np.float64) for a in g0)
    log_p = np.stack(
        [np.log(w[k]) + np_log_pdf(x, mu[k], cov[k]) for k in range(3)], axis=1
    )  # [n, k]
    resp = np.exp(log_p - log_p.max(1, keepdims=True))
    resp /= resp.sum(1, keepdims=True)
    nk = resp.sum(0)
    means = resp.T @ x / nk[:, None]
    covs = np.stack(
        [(resp[:, k, None] * (x - means[k])).T @ (x - means[k]) / nk[k] for k in range(3)]
    ) + 1e-4 * np.eye(2)
    np.testing.assert_allclose(g1.weights, nk / nk.sum(), rtol=1e-4)
    np.testing.assert_allclose(g1.means, means, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(g1.covs, covs, rtol=1e-3, atol=1e-6)
    wn = nk / nk.sum()
    want = -np.sum(wn * np.log(wn)) + sum(
        wn[k] * 0.5 * np.linalg.slogdet(2 * np.pi * np.e * covs[k])[1] for k in range(3)
    )
    np.testing.assert_allclose(float(gmm_entropy(g1)), want, rtol=1e-5)


def test_gmm_entropy_of_one_gaussian_is_exact():
    cov = np.array([[0.5, 0.2], [0.2, 0.3]])
    one = GMM(
        jnp.asarray([1.0, 0.0], jnp.float32),
        jnp.zeros((2, 2), jnp.float32),
        jnp.asarray(np.stack([cov, np.eye(2)]), jnp.float32),
    )
    want = 0.5 * np.log(np.linalg.det(2 * np.pi * np.e * cov))
    np.testing.assert_allclose(float(gmm_entropy(one)), want, rtol=1e-5)


@pytest.fixture(scope="module")
def dacer():
    return DACER(DACERConfig(**SMALL), 3, 2)


@pytest.fixture(scope="module")
def batch(random_batch):
    return random_batch([0.0, 1.0, 0.0, 0.0])


@pytest.fixture(scope="module")
def seeds(dacer):
    return jit(jax.vmap(dacer.init))(jax.random.split(jax.random.key(1), 2))


def test_update_cycle_under_jit_and_vmap_over_seeds(dacer, seeds, batch):
    def cycle(s, k, u):
        k1, k2, k3 = jax.random.split(k, 3)
        s, m0 = dacer.update(s, batch, k1, 0)
        s, m1 = dacer.update(s, batch, k2, 1)
        s1 = s
        s, m2 = dacer.scheduled(s, batch, k3, u)  # unbatched count: a real branch
        return s, (m0, m1, m2, s1.log_alpha)

    run = jit(jax.vmap(cycle, in_axes=(0, 0, None)))
    new, (m0, m1, m2, la) = run(seeds, jax.random.split(jax.random.key(3), 2), jnp.int32(2))
    assert "actor_loss" not in m0 and "actor_loss" in m1  # the policy waits for phase 1
    for m in (m0, m1, m2):
        assert all(bool(jnp.all(jnp.isfinite(v))) for v in m.values())
    assert np.all(np.asarray(new.updates) == 2)
    # α stays put between entropy estimates; with one, it takes one Adam step (lr 3e-2) against
    # the gap to the target entropy
    np.testing.assert_array_equal(np.asarray(la), np.log(np.float32(3.0)))
    ent = np.asarray(m2["entropy_estimate"])
    assert np.all(ent != dacer.target_entropy) and not np.allclose(ent[0], ent[1])
    step = np.where(ent > dacer.target_entropy, -3e-2, 3e-2)
    np.testing.assert_allclose(np.asarray(m2["alpha"]), 3.0 * np.exp(step), rtol=1e-4)
    # 7 updates done, no multiple of entropy_every (4) passed in the last cycle: nothing moves
    new2, (_, _, m2b, _) = run(new, jax.random.split(jax.random.key(4), 2), jnp.int32(7))
    np.testing.assert_array_equal(np.asarray(m2b["alpha"]), np.asarray(m2["alpha"]))
    np.testing.assert_array_equal(np.asarray(m2b["entropy_estimate"]), ent)
    # the denoiser was trained through the chain: its first layer changed
    w0 = np.asarray(seeds.actor.mlp.layers[0].weight)
    assert not np.allclose(np.asarray(new2.actor.mlp.layers[0].weight), w0)


def test_sinusoidal_embedding_matches_formula():
    t, dim = 7.0, 16
    f = 10000.0 ** (-np.arange(8) / 8)
    want = np.concatenate([np.sin(t * f), np.cos(t * f)]) / 4.0
    np.testing.assert_allclose(sinusoidal_embedding(jnp.float32(t), dim), want, atol=1e-6)


def test_ode_sampler_agent_acts_and_differentiates(seeds, batch):
    ode = DACER(DACERConfig(**SMALL, sampler="ode"), 3, 2)

    @jit
    def act_and_grad(state):
        act = ode.act(state, batch.obs, jax.random.key(0), False)
        objective = ode.actor_objective(state, batch, jax.random.key(1))
        grads = eqx.filter_grad(objective.batch_loss)(objective.model)
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
    """∂L/∂μ = ω(μ − y_q)/(σ² + ε), ∂L/∂σ = ω(σ² − (y_b − μ)²)/(σ³ + ε) per critic, ε = 0.1, with
    ω = σ̄² + ε, σ̄ the batch-mean σ (at first) and y_b the sampled target clipped to μ ± 3σ̄: the
    Gaussian negative log-likelihood's gradient, scaled (DSAC-T as in DACER's released code)."""
    state = member(seeds, 0)
    objective = dacer.critic_objective(state, batch, jax.random.key(2))
    yq, yz = (x[0] for x in objective.targets)
    stds = jax.vmap(lambda o, a: eqx.filter_vmap(lambda c: c(o, a))(state.critic))(
        batch.obs, batch.action
    )[1]
    mean_std = np.mean(np.asarray(stds, np.float64), 0)
    omega, bound = mean_std**2 + 0.1, 3.0 * mean_std
    m, sd = np.array([0.3, -0.2]), np.array([0.5, 0.05])
    outputs = Outputs(jnp.asarray(m, jnp.float32), jnp.asarray(sd, jnp.float32))
    grads = jax.grad(lambda o: objective.loss((o.mean, o.std), yq, yz))(outputs)
    yb = m + np.clip(float(yz) - m, -bound, bound)
    np.testing.assert_allclose(grads.mean, omega * (m - float(yq)) / (sd**2 + 0.1), rtol=1e-3)
    np.testing.assert_allclose(
        grads.std, omega * (sd**2 - (yb - m) ** 2) / (sd**3 + 0.1), rtol=1e-3
    )
    # the signs of the negative log-likelihood's gradient: σ shrinks while σ² > (y_b − μ)²
    nll_mean, nll_std = (m - float(yq)) / sd**2, 1 / sd - (yb - m) ** 2 / sd**3
    np.testing.assert_array_equal(np.sign(grads.mean), np.sign(nll_mean))
    np.testing.assert_array_equal(np.sign(grads.std), np.sign(nll_std))


def test_critic_mean_std_is_a_moving_average(dacer, seeds, batch):
    state = member(seeds, 0)

    def batch_mean_std(s):
        twin = lambda o, a: eqx.filter_vmap(lambda c: c(o, a))(s.critic)
        return np.mean(np.asarray(jax.vmap(twin)(batch.obs, batch.action)[1], np.float64), 0)

    step = jit(lambda s, k: dacer.update(s, batch, k, 0)[0])
    first = step(state, jax.random.key(0))
    np.testing.assert_allclose(first.mean_std, batch_mean_std(state), rtol=1e-5)
    second = step(first, jax.random.key(1))
    want = 0.995 * np.asarray(first.mean_std, np.float64) + 0.005 * batch_mean_std(first)
    np.testing.assert_allclose(second.mean_std, want, rtol=1e-5)


def test_validation():
    with pytest.raises(ValueError, match="sampler"):
        DACERConfig(sampler="sde").validate()
    with pytest.raises(ValueError, match="ddpm_variance"):
        DACERConfig(ddpm_variance="learned").validate()
    with pytest.raises(ValueError, match="entropy_states"):
        DACERConfig(batch_size=8).validate()
    DACERConfig().validate()


def test_anatomy_of_the_agents_denoiser(seeds):
    den = member(seeds, 0).actor
    obs, act, emb, w = 3, 2, 16, SMALL["denoiser_width"]
    anatomy = ns.anatomy(den, jnp.zeros(obs), jnp.zeros(act), jnp.float32(4.0))
    assert anatomy.names == (
        "time1",
        "time2",
        "mlp.layers[0]",
        "mlp.layers[1]",
        "mlp.layers[2]",
        "mlp.layers[3]",
    )
    t1, t2, m0 = anatomy[0], anatomy[1], anatomy[2]
    assert t1.unit_shape == (2 * emb,) and t2.unit_shape == (emb,) and m0.unit_shape == (w,)
    out = {s.path: s.element_owner() for s in t2.outgoing}
    # the embedding enters the MLP after obs and the noisy action: columns obs+act … obs+act+15
    want = np.full((w, obs + act + emb), -1)
    want[:, obs + act :] = np.arange(emb)[None, :]
    np.testing.assert_array_equal(out[".mlp.layers[0].weight"], want)
    assert {s.path for s in t1.outgoing} == {".time2.weight"}
    assert anatomy["mlp.layers[3]"].output and not any(g.shared for g in anatomy)


def test_ddpm_calls_are_the_chain(dacer, seeds):
    """The chain with its calls recorded is the chain: same output, and the recorded inputs are
    the x each step read (x_T first) with the step indices T−1 … 0."""
    sch = vp_schedule(20)
    eps_fn = lambda x, t: 0.3 * jnp.tanh(x) + 0.01 * t
    x_T, noise = jnp.asarray([0.4, -1.2]), jax.random.normal(jax.random.key(0), (20, 2))
    out, xs, ts = ddpm_sample_calls(sch, lambda x, t, j: eps_fn(x, t), x_T, noise)
    np.testing.assert_array_equal(out, ddpm_sample(sch, eps_fn, x_T, noise))
    np.testing.assert_array_equal(ts, np.arange(19, -1, -1))
    np.testing.assert_array_equal(xs[0], x_T)
    step = reverse_step(sch, eps_fn, xs[3], jnp.int32(16), noise[16])
    np.testing.assert_allclose(xs[4], step, rtol=1e-6)


@pytest.mark.parametrize("sampler", ["ddpm", "ode"])
def test_denoiser_objective_carries_the_chain_gradient(sampler, seeds, batch):
    """The per-call linearised loss has the same parameter gradient as the loss through the
    whole chain or ODE solve (same noise), so per-unit gradient scores see every call's share."""
    dacer = DACER(DACERConfig(**SMALL, sampler=sampler, ode_steps=3), 3, 2)
    state, key = member(seeds, 0), jax.random.key(7)

    @jit
    def both(state):
        per_call = dacer.denoiser_objective(state, batch, key)
        chain = dacer.actor_objective(state, batch, key)
        grad = lambda o: eqx.filter_grad(o.batch_loss)(state.actor)
        return grad(per_call), grad(chain)

    got, want = both(state)
    calls = {"ddpm": 20, "ode": 7}[sampler]
    assert dacer.denoiser_calls == calls
    assert dacer.denoiser_objective(state, batch, key).inputs[0].shape == (4 * calls, 3)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=2e-3, atol=1e-6)


@pytest.mark.parametrize("sampler", ["ddpm", "ode"])
def test_surgery_step_scores_and_resets_critic_and_denoiser(sampler, seeds, batch):
    from agents import ResetConfig, SurgeryConfig, TrainConfig
    from agents.training import Surgery

    dacer = DACER(DACERConfig(**SMALL, sampler=sampler, ode_steps=3), 3, 2)
    networks = ("critic", "actor")
    config = TrainConfig(
        agent="dacer",
        surgery=SurgeryConfig(networks=networks),
        reset=ResetConfig(method="regrama", tau=0.5, networks=networks, every=1),
    )
    surgery = Surgery.of(config)
    state = member(seeds, 0)
    states = surgery.init(dacer, state, batch, jax.random.key(0))
    new, _, metrics = jit(
        lambda s, st, k: surgery.step(dacer, s, st, batch, k, jnp.int32(1), jnp.int32(0))
    )(state, states, jax.random.key(0))
    for name in networks:
        assert f"surgery/{name}/grama" in metrics and f"surgery/{name}/reset" in metrics
    assert "surgery/actor/grama/time1" in metrics
    assert jax.tree.structure(new) == jax.tree.structure(state)
