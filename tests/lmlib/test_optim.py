"""lmlib.optim: gradient descent against its closed form; SGD and AdamW step for step
against torch.optim.SGD / torch.optim.AdamW."""

from __future__ import annotations

import copy

import pytest
import torch

from lmlib.optim import SGD, AdamW, gradient_descent


def test_gradient_descent_on_a_quadratic_matches_the_closed_form() -> None:
    # J(theta) = a/2 * theta^2 per coordinate: theta_t = (1 - lr a)^t theta_0
    a = torch.tensor([1.0, 4.0, 0.5], dtype=torch.float64)
    theta0 = torch.tensor([2.0, -1.0, 3.0], dtype=torch.float64)
    lr, steps = 0.1, 25
    path = gradient_descent(lambda th: a * th, theta0, lr, steps)
    assert path.shape == (steps + 1, 3)
    t = torch.arange(steps + 1, dtype=torch.float64)[:, None]
    assert torch.allclose(path, (1 - lr * a) ** t * theta0, atol=1e-12)
    assert torch.equal(path[0], theta0)


def test_gradient_descent_diverges_with_a_too_large_step() -> None:
    # |1 - lr * a| > 1 for lr * a > 2: the iterates grow (the chapter's "learning rate too large")
    path = gradient_descent(lambda th: 3.0 * th, torch.tensor([1.0], dtype=torch.float64), lr=0.8, steps=10)
    assert (path.abs()[1:] > path.abs()[:-1]).all()  # every step overshoots further
    assert path[-1].item() == pytest.approx((1 - 0.8 * 3.0) ** 10)  # |1 - 2.4|^10 = 28.9


def test_gradient_descent_errors() -> None:
    with pytest.raises(ValueError, match="lr"):
        gradient_descent(lambda th: th, torch.ones(2), lr=0, steps=3)
    with pytest.raises(ValueError, match="steps"):
        gradient_descent(lambda th: th, torch.ones(2), lr=0.1, steps=-1)
    with pytest.raises(ValueError, match=r"expected a tensor of shape \(2,\)"):
        gradient_descent(lambda th: torch.ones(3), torch.ones(2), lr=0.1, steps=2)
    with pytest.raises(ValueError, match="not finite at step"):
        gradient_descent(lambda th: th * 1e300, torch.ones(2, dtype=torch.float64), lr=1e10, steps=5)
    with pytest.raises(TypeError):
        gradient_descent(lambda th: th, torch.ones(2, dtype=torch.long), lr=0.1, steps=1)


# --------------------------------------------------------------------------- vs torch.optim


def _model(dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3), torch.nn.Linear(3, 2))
    return m.to(dtype)


def _trajectories(make_ours, make_ref, dtype=torch.float32, steps=50, freeze_last=False, reload_at=None):
    ours_model, ref_model = _model(dtype), _model(dtype)
    if freeze_last:  # a parameter that never gets a gradient (p.grad is None) is left alone
        for m in (ours_model, ref_model):
            m[3].weight.requires_grad_(False)
    ours, ref = make_ours(ours_model.parameters()), make_ref(ref_model.parameters())
    g = torch.Generator().manual_seed(1)
    for step in range(steps):
        x = torch.randn(16, 5, generator=g, dtype=dtype)
        y = torch.randn(16, 2, generator=g, dtype=dtype)
        for model, opt in ((ours_model, ours), (ref_model, ref)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
        if reload_at is not None and step == reload_at:
            # save and restore our optimizer mid-run (as a checkpoint would)
            state = copy.deepcopy(ours.state_dict())
            ours = make_ours(ours_model.parameters())
            ours.load_state_dict(state)
        for a, b in zip(ours_model.parameters(), ref_model.parameters()):
            yield step, a, b


SGD_SETTINGS = [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, nesterov=True),
    dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=1e-2),
]


@pytest.mark.parametrize("kw", SGD_SETTINGS)
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_sgd_matches_torch_step_for_step(kw, dtype, tol) -> None:
    for step, a, b in _trajectories(lambda p: SGD(p, **kw), lambda p: torch.optim.SGD(p, **kw), dtype):
        assert torch.allclose(a, b, atol=tol, rtol=0), f"step {step}: max diff {(a - b).abs().max()}"


ADAMW_SETTINGS = [
    dict(lr=1e-3),
    dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
    dict(lr=1e-2, weight_decay=0.0),
]


@pytest.mark.parametrize("kw", ADAMW_SETTINGS)
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_adamw_matches_torch_step_for_step(kw, dtype, tol) -> None:
    for step, a, b in _trajectories(lambda p: AdamW(p, **kw), lambda p: torch.optim.AdamW(p, **kw), dtype):
        assert torch.allclose(a, b, atol=tol, rtol=0), f"step {step}: max diff {(a - b).abs().max()}"


def test_frozen_parameters_are_skipped() -> None:
    kw = dict(lr=1e-2, weight_decay=0.1)
    for _, a, b in _trajectories(lambda p: AdamW(p, **kw), lambda p: torch.optim.AdamW(p, **kw), freeze_last=True):
        assert torch.allclose(a, b, atol=1e-6)
    kw = dict(lr=0.1, momentum=0.9)
    for _, a, b in _trajectories(lambda p: SGD(p, **kw), lambda p: torch.optim.SGD(p, **kw), freeze_last=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_state_survives_a_save_and_load_mid_run() -> None:
    kw = dict(lr=3e-3, weight_decay=0.05)
    for _, a, b in _trajectories(lambda p: AdamW(p, **kw), lambda p: torch.optim.AdamW(p, **kw), reload_at=20):
        assert torch.allclose(a, b, atol=1e-6)
    kw = dict(lr=0.05, momentum=0.9)
    for _, a, b in _trajectories(lambda p: SGD(p, **kw), lambda p: torch.optim.SGD(p, **kw), reload_at=20):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize(
    "factory, match",
    [
        (lambda p: SGD(p, lr=-1), "lr"),
        (lambda p: SGD(p, lr=0.1, momentum=-0.5), "momentum"),
        (lambda p: SGD(p, lr=0.1, nesterov=True), "Nesterov"),
        (lambda p: SGD(p, lr=0.1, weight_decay=-1), "weight_decay"),
        (lambda p: AdamW(p, betas=(0.9, 1.0)), "betas"),
        (lambda p: AdamW(p, eps=0), "eps"),
        (lambda p: AdamW(p, lr=float("nan")), "lr"),
    ],
)
def test_optimizers_reject_bad_hyperparameters(factory, match) -> None:
    with pytest.raises(ValueError, match=match):
        factory([torch.nn.Parameter(torch.zeros(2))])


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "factory, match",
    [
        (lambda p: SGD(p, lr=0.1, weight_decay=NAN), "weight_decay must be a number, got NaN"),
        (lambda p: SGD(p, lr=0.1, weight_decay=INF), "weight_decay must be finite, got inf"),
        (lambda p: SGD(p, lr=NAN), "lr must be a number, got NaN"),
        (lambda p: SGD(p, lr=INF), "lr must be finite, got inf"),
        (lambda p: SGD(p, lr=0.1, momentum=NAN), "momentum must be a number, got NaN"),
        (lambda p: SGD(p, lr=0.1, momentum=0.9, dampening=NAN), "dampening must be a number, got NaN"),
        (lambda p: AdamW(p, weight_decay=NAN), "weight_decay must be a number, got NaN"),
        (lambda p: AdamW(p, weight_decay=INF), "weight_decay must be finite, got inf"),
        (lambda p: AdamW(p, betas=(NAN, 0.999)), r"betas\[0\] must be a number, got NaN"),
        (lambda p: AdamW(p, betas=(0.9, NAN)), r"betas\[1\] must be a number, got NaN"),
        (lambda p: AdamW(p, eps=NAN), "eps must be a number, got NaN"),
        (lambda p: AdamW(p, eps=INF), "eps must be finite, got inf"),
    ],
)
def test_optimizers_refuse_nan_and_inf_hyperparameters(factory, match) -> None:
    # NaN passed every `x < 0` / `0 <= x < 1` comparison and turned the parameters into NaN
    with pytest.raises(ValueError, match=match):
        factory([torch.nn.Parameter(torch.zeros(2))])


def test_gradient_descent_refuses_nan_lr_and_float_steps() -> None:
    with pytest.raises(ValueError, match="lr must be a number, got NaN"):
        gradient_descent(lambda th: th, torch.ones(2), lr=NAN, steps=3)
    with pytest.raises(TypeError, match="steps must be an integer, got float 3.0"):
        gradient_descent(lambda th: th, torch.ones(2), lr=0.1, steps=3.0)


# --------------------------------------------------------------------------- Muon (chapter 4.6)

from lmlib.optim import Muon, MuonWithAuxAdamW, muon_lr, muon_param_groups, newton_schulz  # noqa: E402

# a tall, a wide and a square matrix (Newton-Schulz transposes the tall one)
MUON_SHAPES = [(24, 6), (6, 24), (12, 12)]
MUON_SETTINGS = [
    dict(),  # torch's defaults: lr 1e-3, wd 0.1, momentum 0.95, nesterov, "original"
    dict(lr=0.02, nesterov=False, weight_decay=0.0),
    dict(lr=0.01, momentum=0.9, weight_decay=0.05, adjust_lr_fn="original"),
    dict(lr=3e-3, adjust_lr_fn="match_rms_adamw"),
    dict(lr=0.02, ns_steps=3, eps=1e-6, ns_coefficients=(2.0, -1.5, 0.5), nesterov=False),
]


def _muon_trajectories(make_ours, make_ref, shape, dtype, steps=8):
    """Both optimizers minimise the same least-squares loss ||X W^T - Y||^2 from the same W."""
    g = torch.Generator().manual_seed(0)
    m, n = shape
    W0 = torch.randn(m, n, generator=g, dtype=dtype)
    ours_w, ref_w = torch.nn.Parameter(W0.clone()), torch.nn.Parameter(W0.clone())
    ours, ref = make_ours([ours_w]), make_ref([ref_w])
    for step in range(steps):
        X = torch.randn(16, n, generator=g, dtype=dtype)
        Y = torch.randn(16, m, generator=g, dtype=dtype)
        for w, opt in ((ours_w, ours), (ref_w, ref)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(X @ w.T, Y).backward()
            opt.step()
        yield step, ours_w, ref_w


@pytest.mark.parametrize("shape", MUON_SHAPES)
@pytest.mark.parametrize("kw", MUON_SETTINGS)
@pytest.mark.parametrize("dtype, rtol, atol", [(torch.float32, 1e-5, 1e-6), (torch.float64, 1e-12, 1e-12)])
def test_muon_matches_torch_step_for_step(shape, kw, dtype, rtol, atol) -> None:
    # same defaults as torch.optim.Muon, including its bfloat16 Newton-Schulz iteration
    for step, a, b in _muon_trajectories(lambda p: Muon(p, **kw), lambda p: torch.optim.Muon(p, **kw), shape, dtype):
        assert torch.allclose(a, b, rtol=rtol, atol=atol), f"step {step}: max diff {(a - b).abs().max()}"


def _quintic_via_svd(G: torch.Tensor, steps: int = 5, coefficients=(3.4445, -4.7750, 2.0315)) -> torch.Tensor:
    """The published definition: U p^k(S / ||G||_F) V^T with p(s) = a s + b s^3 + c s^5 (float64)."""
    a, b, c = coefficients
    U, S, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    s = S / torch.linalg.matrix_norm(G.double())
    for _ in range(steps):
        s = a * s + b * s**3 + c * s**5
    return U @ torch.diag(s) @ Vh


@pytest.mark.parametrize("shape", MUON_SHAPES)
def test_newton_schulz_is_the_quintic_applied_to_the_singular_values(shape) -> None:
    G = torch.randn(*shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for steps in (0, 1, 5):
        out = newton_schulz(G, steps=steps)
        assert out.shape == G.shape and out.dtype == torch.float64
        assert torch.allclose(out, _quintic_via_svd(G, steps), atol=1e-12)
    # the singular values end up near 1 (not exactly: about [0.7, 1.2] for a random matrix)
    sv = torch.linalg.svdvals(newton_schulz(G))
    assert sv.min() > 0.6 and sv.max() < 1.25, sv
    # float32 and bfloat16 iterations approximate the float64 one
    ref = newton_schulz(G)
    assert torch.allclose(newton_schulz(G.float()).double(), ref, atol=1e-5)
    assert torch.allclose(newton_schulz(G, dtype=torch.bfloat16).double(), ref, atol=0.05)
    assert newton_schulz(torch.zeros(3, 4)).abs().max() == 0  # eps keeps a zero matrix zero


def test_muon_lr_adjustments_follow_the_published_formulas() -> None:
    assert muon_lr(0.02, (512, 128)) == pytest.approx(0.02 * 2.0)  # sqrt(max(1, A/B)) = sqrt(4)
    assert muon_lr(0.02, (128, 512), "original") == pytest.approx(0.02)  # wide: max(1, 1/4) = 1
    assert muon_lr(1e-3, (512, 128), "match_rms_adamw") == pytest.approx(1e-3 * 0.2 * 512**0.5)


@pytest.mark.parametrize("kw", MUON_SETTINGS[:4])
def test_muon_in_float64_matches_torch_with_an_exact_orthogonaliser(kw, monkeypatch) -> None:
    # with the iteration in full precision (ns_dtype=None), our momentum, Nesterov, weight
    # decay and lr scale equal torch's when torch's bfloat16 iteration is replaced by the SVD
    # definition above
    import torch.optim._muon as torch_muon

    def exact(grad, ns_coefficients, ns_steps, eps):
        return _quintic_via_svd(grad, ns_steps, ns_coefficients)

    monkeypatch.setattr(torch_muon, "_zeropower_via_newtonschulz", exact)
    for shape in MUON_SHAPES:
        traj = _muon_trajectories(lambda p: Muon(p, ns_dtype=None, **kw), lambda p: torch.optim.Muon(p, **kw),
                                  shape, torch.float64)
        for step, a, b in traj:
            assert torch.allclose(a, b, rtol=0, atol=1e-11), f"{shape} step {step}: {(a - b).abs().max()}"


def _tiny_gpt():
    from lmlib.model import GPT, GPTConfig

    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.0))


HIDDEN = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def test_muon_param_groups_put_every_parameter_in_exactly_one_group() -> None:
    model = _tiny_gpt()
    groups = muon_param_groups(model, weight_decay=0.05)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))  # each once (lm_head is tied to wte)
    names = {id(p): n for n, p in model.named_parameters()}
    muon = {names[id(p)] for g in groups if g["use_muon"] for p in g["params"]}
    assert muon == {n for n in names.values() if n.endswith(HIDDEN)}  # 4 matrices x 2 blocks
    assert len(muon) == 8
    adamw = {names[id(p)]: g["weight_decay"] for g in groups if not g["use_muon"] for p in g["params"]}
    assert adamw["transformer.wte.weight"] == adamw["transformer.wpe.weight"] == 0.05  # embeddings: AdamW
    assert all(adamw[n] == 0.0 for n, p in model.named_parameters() if p.dim() == 1)  # gains, biases: no decay

    class Untied(torch.nn.Module):  # an output head that is its own nn.Linear
        def __init__(self):
            super().__init__()
            self.emb, self.hidden, self.norm = torch.nn.Embedding(10, 4), torch.nn.Linear(4, 4), torch.nn.LayerNorm(4)
            self.lm_head = torch.nn.Linear(4, 10, bias=False)

    m = Untied()
    m.norm.weight.requires_grad_(False)  # frozen parameters are left out
    groups = muon_param_groups(m)
    assert [g["params"] for g in groups if g["use_muon"]] == [[m.hidden.weight]]
    others = [p for g in groups if not g["use_muon"] for p in g["params"]]
    assert {id(p) for p in others} == {id(m.emb.weight), id(m.lm_head.weight), id(m.hidden.bias), id(m.norm.bias)}


def test_muon_with_aux_adamw_equals_torch_muon_plus_torch_adamw() -> None:
    ours_model, ref_model = _tiny_gpt(), _tiny_gpt()
    kw = dict(lr=3e-3, weight_decay=0.1)
    ours = MuonWithAuxAdamW(ours_model, betas=(0.9, 0.95), **kw)
    hidden = [p for n, p in ref_model.named_parameters() if n.endswith(HIDDEN)]
    rest = [(n, p) for n, p in ref_model.named_parameters() if not n.endswith(HIDDEN)]
    ref = [
        torch.optim.Muon(hidden, adjust_lr_fn="match_rms_adamw", **kw),
        torch.optim.AdamW([{"params": [p for _, p in rest if p.dim() == 2]},
                           {"params": [p for _, p in rest if p.dim() < 2], "weight_decay": 0.0}],
                          betas=(0.9, 0.95), **kw),
    ]
    g = torch.Generator().manual_seed(1)
    for step in range(6):
        x = torch.randint(11, (4, 8), generator=g)
        y = torch.randint(11, (4, 8), generator=g)
        for model, opts in ((ours_model, [ours]), (ref_model, ref)):
            for o in opts:
                o.zero_grad()
            model(x, y)[1].backward()
            for o in opts:
                o.step()
        for (name, a), b in zip(ours_model.named_parameters(), ref_model.parameters()):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), f"step {step} {name}: {(a - b).abs().max()}"


def test_muon_state_survives_a_save_and_load_mid_run() -> None:
    # our optimizer is rebuilt from its state dict after 3 of 6 steps (as a checkpoint would);
    # torch's runs uninterrupted
    kw = dict(lr=0.02, momentum=0.9)
    g = torch.Generator().manual_seed(2)
    W0 = torch.randn(12, 6, generator=g)
    a, b = torch.nn.Parameter(W0.clone()), torch.nn.Parameter(W0.clone())
    ours, ref = Muon([a], **kw), torch.optim.Muon([b], **kw)
    for step in range(6):
        if step == 3:
            state = copy.deepcopy(ours.state_dict())
            ours = Muon([a], **kw)
            ours.load_state_dict(state)
        grad = torch.randn(12, 6, generator=g)
        for w, opt in ((a, ours), (b, ref)):
            w.grad = (grad * w).clone()  # a gradient that depends on the weights
            opt.step()
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), f"step {step}: {(a - b).abs().max()}"


@pytest.mark.parametrize(
    "factory, err, match",
    [
        (lambda p: Muon(p, lr=float("nan")), ValueError, "lr"),
        (lambda p: Muon(p, weight_decay=-0.1), ValueError, "weight_decay"),
        (lambda p: Muon(p, momentum=1.0), ValueError, "momentum"),
        (lambda p: Muon(p, eps=0.0), ValueError, "eps"),
        (lambda p: Muon(p, ns_steps=100), ValueError, "ns_steps"),
        (lambda p: Muon(p, ns_coefficients=(3.4, -4.7)), ValueError, "ns_coefficients"),
        (lambda p: Muon(p, ns_coefficients=(3.4, float("inf"), 2.0)), ValueError, r"ns_coefficients\[1\]"),
        (lambda p: Muon(p, adjust_lr_fn="rms"), ValueError, "adjust_lr_fn"),
        (lambda p: Muon(p, nesterov="yes"), TypeError, "nesterov"),
        (lambda p: Muon(p, ns_dtype=torch.int32), TypeError, "ns_dtype"),
        (lambda p: Muon([{"params": p, "lr": float("inf")}]), ValueError, "lr"),
        (lambda p: Muon([torch.nn.Parameter(torch.zeros(3))]), ValueError, r"2-D.*\(3,\)"),
        (lambda p: MuonWithAuxAdamW([{"params": p}]), ValueError, "use_muon"),
        (lambda p: MuonWithAuxAdamW([{"params": p, "use_muon": False}], betas=(0.9, 1.0)), ValueError, "betas"),
        (lambda p: MuonWithAuxAdamW([{"params": p, "use_muon": True}], ns_eps=float("nan")), ValueError, "ns_eps"),
        (lambda p: MuonWithAuxAdamW([{"params": [torch.nn.Parameter(torch.zeros(3))], "use_muon": True}]),
         ValueError, "2-D"),
        (lambda p: muon_param_groups(p), TypeError, "model"),
        (lambda p: newton_schulz(torch.zeros(3)), ValueError, "G must be 2-d"),
        (lambda p: newton_schulz(torch.zeros(3, 3), steps=-1), ValueError, "steps"),
        (lambda p: muon_lr(0.1, (3, 3), "rms"), ValueError, "adjust_lr_fn"),
    ],
)
def test_muon_rejects_bad_arguments(factory, err, match) -> None:
    with pytest.raises(err, match=match):
        factory([torch.nn.Parameter(torch.zeros(2, 3))])
