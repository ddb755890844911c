"""The native trainer building blocks (mbpo_fast._C.train_ops: sgemm, sgemm_bf16, the dense
layer, activations, Adam) against torch: matmul in float64, autograd of a linear layer with
SiLU/ReLU, and torch.optim.Adam(fused=True) with weight decay; plus bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

C = pytest.importorskip("mbpo_fast._C", reason="native extension not built")
ops = C.train_ops


def _bf16(x: np.ndarray) -> np.ndarray:
    """x rounded to bf16 (round to nearest even) by torch, as float64."""
    return torch.from_numpy(np.ascontiguousarray(x)).to(torch.bfloat16).double().numpy()


def _operand(rng, rows, cols, pad):
    """A float32 [rows, cols] view with row stride cols + pad (lda > width when pad > 0)."""
    base = rng.standard_normal((rows, cols + pad)).astype(np.float32)
    return base[:, :cols]


def _check_gemm(fn, rng, m, n, k, ta, tb, beta, pad, bf16):
    a = _operand(rng, k if ta else m, m if ta else k, pad)
    b = _operand(rng, n if tb else k, k if tb else n, pad)
    c_full = np.full((m, n + pad), 777.0, dtype=np.float32)
    c = c_full[:, :n]
    if beta == 0.0:
        c[...] = np.nan  # never read with beta == 0
    else:
        c[...] = rng.standard_normal((m, n)).astype(np.float32)
    c0 = c.astype(np.float64)
    conv = _bf16 if bf16 else (lambda x: x.astype(np.float64))
    opa = conv(a).T if ta else conv(a)
    opb = conv(b).T if tb else conv(b)
    ref = opa @ opb
    mag = np.abs(opa) @ np.abs(opb)
    if beta != 0.0:
        ref = ref + beta * c0
        mag = mag + abs(beta) * np.abs(c0)
    out = fn(a, b, c, trans_a=ta, trans_b=tb, beta=beta)
    assert out is c
    tol = (k + 3) * 1.2e-7 * mag + 1e-30
    err = np.abs(c.astype(np.float64) - ref)
    assert np.all(err <= tol), f"max excess {np.max(err - tol)} (m={m} n={n} k={k} ta={ta} tb={tb})"
    assert np.all(c_full[:, n:] == 777.0), "wrote past the row"


TRAINER_SHAPES = [  # (m, n, k) of the SAC / ensemble forward, dW and dx products
    (256, 256, 256), (256, 256, 11), (256, 256, 14), (256, 6, 256), (256, 1, 256),
    (11, 256, 256), (256, 14, 256), (256, 200, 14), (256, 24, 200), (200, 24, 256),
    (256, 200, 24), (1, 1, 1), (3, 1, 7), (1, 5, 2),
]  # fmt: skip


@pytest.mark.parametrize("bf16", [False, True], ids=["f32", "bf16"])
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("mnk", TRAINER_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gemm_trainer_shapes_match_float64(mnk, ta, tb, bf16):
    rng = np.random.default_rng(hash((mnk, ta, tb, bf16)) % 2**32)
    fn = ops.sgemm_bf16 if bf16 else ops.sgemm
    for beta in (0.0, 1.0):
        _check_gemm(fn, rng, *mnk, ta, tb, beta, pad=3, bf16=bf16)


@settings(max_examples=60, deadline=None)
@given(
    m=st.integers(1, 80), n=st.integers(1, 80), k=st.integers(1, 300),
    ta=st.booleans(), tb=st.booleans(), beta=st.sampled_from([0.0, 1.0, -0.75]),
    pad=st.integers(0, 4), bf16=st.booleans(), seed=st.integers(0, 2**32 - 1),
)  # fmt: skip
def test_gemm_random_shapes_match_float64(m, n, k, ta, tb, beta, pad, bf16, seed):
    fn = ops.sgemm_bf16 if bf16 else ops.sgemm
    _check_gemm(fn, np.random.default_rng(seed), m, n, k, ta, tb, beta, pad, bf16)


@pytest.mark.parametrize("bf16", [False, True], ids=["f32", "bf16"])
def test_gemm_matches_torch_and_portable(bf16):
    rng = np.random.default_rng(5)
    a = rng.standard_normal((256, 200)).astype(np.float32)
    b = rng.standard_normal((200, 24)).astype(np.float32)
    fn = ops.sgemm_bf16 if bf16 else ops.sgemm
    got = fn(a, b)
    portable = fn(a, b, portable=True)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    want = (ta.bfloat16().float() @ tb.bfloat16().float()) if bf16 else ta @ tb
    np.testing.assert_allclose(got, want.numpy(), rtol=2e-5, atol=2e-4)
    np.testing.assert_allclose(got, portable, rtol=2e-5, atol=2e-4)


def test_kernel_names():
    assert ops.sgemm_kernel_name() in ("avx512", "portable")
    assert ops.sgemm_bf16_kernel_name() in ("avx512_bf16", "portable")


# ---------------------------------------------------------------------------- dense layer


@pytest.mark.parametrize("act", ["relu", "silu"])
@pytest.mark.parametrize("rows,inp,out", [(256, 14, 200), (1, 11, 256), (37, 256, 6), (5, 200, 1)])
def test_linear_layer_matches_torch_autograd(act, rows, inp, out):
    rng = np.random.default_rng(rows * 1000 + inp + out)
    x = rng.standard_normal((rows, inp)).astype(np.float32)
    w = (rng.standard_normal((inp, out)) / np.sqrt(inp)).astype(np.float32)
    b = (0.1 * rng.standard_normal(out)).astype(np.float32)
    gout = rng.standard_normal((rows, out)).astype(np.float32)

    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    tw = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    tb = torch.tensor(b, dtype=torch.float64, requires_grad=True)
    pre = tx @ tw + tb
    h = torch.relu(pre) if act == "relu" else torch.nn.functional.silu(pre)
    (h * torch.from_numpy(gout).double()).sum().backward()

    y = ops.linear_forward(x, w, b)
    np.testing.assert_allclose(y, pre.detach().numpy(), rtol=1e-5, atol=1e-5)
    saved = ops.activation_forward(y, act)  # y becomes h
    np.testing.assert_allclose(y, h.detach().numpy(), rtol=1e-5, atol=1e-5)
    g = gout.copy()
    ops.activation_backward(y if act == "relu" else saved, g, act)
    dw, db, dx = ops.linear_backward(x, w, g)
    np.testing.assert_allclose(dw, tw.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(db, tb.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-4, atol=1e-4)

    # accumulate=True adds to the given gradients
    dw2, db2 = np.ones_like(dw), np.full_like(db, 2.0)
    _, _, none = ops.linear_backward(x, w, g, dw=dw2, db=db2, accumulate=True, need_dx=False)
    assert none is None
    np.testing.assert_allclose(dw2, dw + 1.0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(db2, db + 2.0, rtol=1e-5, atol=1e-5)


def test_linear_bf16_matches_torch_on_rounded_inputs():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((64, 200)).astype(np.float32)
    w = rng.standard_normal((200, 24)).astype(np.float32)
    b = rng.standard_normal(24).astype(np.float32)
    dy = rng.standard_normal((64, 24)).astype(np.float32)
    y = ops.linear_forward(x, w, b, bf16=True)
    np.testing.assert_allclose(y, _bf16(x) @ _bf16(w) + b, rtol=1e-5, atol=1e-4)
    dw, db, dx = ops.linear_backward(x, w, dy, bf16=True)
    np.testing.assert_allclose(dw, _bf16(x).T @ _bf16(dy), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(db, dy.astype(np.float64).sum(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, _bf16(dy) @ _bf16(w).T, rtol=1e-5, atol=1e-4)


def test_activations_match_torch_elementwise():
    rng = np.random.default_rng(3)
    x = (4.0 * rng.standard_normal(1037)).astype(np.float32)
    x[:4] = [0.0, -0.0, 90.0, -90.0]
    g = rng.standard_normal(1037).astype(np.float32)
    tx = torch.tensor(x, requires_grad=True)
    ts = torch.nn.functional.silu(tx)
    ts.backward(torch.from_numpy(g))
    s = x.copy()
    saved = ops.activation_forward(s, "silu")
    np.testing.assert_array_equal(saved, x)
    s2, pre = x.copy(), np.empty_like(x)
    assert ops.activation_forward(s2, "silu", pre) is pre
    np.testing.assert_array_equal(pre, x)
    np.testing.assert_array_equal(s2, s)
    np.testing.assert_allclose(s, ts.detach().numpy(), rtol=2e-6, atol=1e-30)
    gs = g.copy()
    ops.activation_backward(saved, gs, "silu")
    np.testing.assert_allclose(gs, tx.grad.numpy(), rtol=2e-6, atol=1e-6)

    tr = torch.tensor(x, requires_grad=True)
    torch.relu(tr).backward(torch.from_numpy(g))
    r = x.copy()
    assert ops.activation_forward(r, "relu") is None
    np.testing.assert_array_equal(r, np.maximum(x, 0.0))
    gr = g.copy()
    ops.activation_backward(r, gr, "relu")
    np.testing.assert_array_equal(gr, tr.grad.numpy())


# ---------------------------------------------------------------------------- Adam


@pytest.mark.parametrize("n", [1, 7, 16, 1000, 65_536 + 5])
@pytest.mark.parametrize("weight_decay", [0.0, 5e-5, 0.01])
def test_adam_step_matches_torch_fused_adam(n, weight_decay):
    rng = np.random.default_rng(n)
    lr, betas, eps = 3e-4, (0.9, 0.999), 1e-8
    p_t = torch.nn.Parameter(torch.from_numpy(rng.standard_normal(n).astype(np.float32)))
    opt = torch.optim.Adam(
        [p_t], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=True
    )
    p = p_t.detach().numpy().copy()
    m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    step = np.zeros(1, np.float32)
    for _ in range(12):
        g = (0.1 * rng.standard_normal(n)).astype(np.float32)
        p_t.grad = torch.from_numpy(g.copy())
        opt.step()
        ops.adam_step(p, g, m, v, step, lr=lr, beta1=betas[0], beta2=betas[1], eps=eps,
                      weight_decay=weight_decay)  # fmt: skip
        state = opt.state[p_t]
        assert float(step[0]) == float(state["step"])
        np.testing.assert_allclose(m, state["exp_avg"].numpy(), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(v, state["exp_avg_sq"].numpy(), rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(p, p_t.detach().numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.skipif(
    torch.backends.cpu.get_cpu_capability() != "AVX512" or ops.sgemm_kernel_name() != "avx512",
    reason="bit-exactness holds between torch's AVX-512 build and our AVX-512 kernel",
)
def test_adam_step_is_bit_exact_with_torch_on_whole_vectors():
    """torch's fused kernel FMA-contracts the L2 term, the lerp and the second moment on
    16-float vectors; ours computes the same, so whole vectors agree bit for bit."""
    n = 4096
    rng = np.random.default_rng(1)
    p_t = torch.nn.Parameter(torch.from_numpy(rng.standard_normal(n).astype(np.float32)))
    opt = torch.optim.Adam([p_t], lr=1e-3, weight_decay=0.01, fused=True)
    p, m, v = p_t.detach().numpy().copy(), np.zeros(n, np.float32), np.zeros(n, np.float32)
    step = np.zeros(1, np.float32)
    for _ in range(20):
        g = (0.1 * rng.standard_normal(n)).astype(np.float32)
        p_t.grad = torch.from_numpy(g.copy())
        opt.step()
        ops.adam_step(p, g, m, v, step, lr=1e-3, weight_decay=0.01)
    np.testing.assert_array_equal(p, p_t.detach().numpy())
    np.testing.assert_array_equal(m, opt.state[p_t]["exp_avg"].numpy())
    np.testing.assert_array_equal(v, opt.state[p_t]["exp_avg_sq"].numpy())


def test_adam_step_works_in_place_on_torch_state():
    """The trainers update torch's own storage: step on .numpy() views of the state."""
    p_t = torch.nn.Parameter(torch.randn(300))
    ref = torch.nn.Parameter(p_t.detach().clone())
    opts = [torch.optim.Adam([q], lr=1e-3, weight_decay=1e-4, fused=True) for q in (p_t, ref)]
    for _ in range(3):
        g = torch.randn(300)
        p_t.grad, ref.grad = g.clone(), g.clone()
        opts[1].step()
        if not opts[0].state:
            opts[0].step()  # torch creates the state on the first step
            continue
        st_ = opts[0].state[p_t]
        ops.adam_step(p_t.detach().numpy(), g.numpy(), st_["exp_avg"].numpy(),
                      st_["exp_avg_sq"].numpy(), st_["step"].view(1).numpy(), lr=1e-3,
                      weight_decay=1e-4)  # fmt: skip
    torch.testing.assert_close(p_t.detach(), ref.detach(), rtol=1e-6, atol=1e-7)
    assert float(opts[0].state[p_t]["step"]) == 3.0


# ---------------------------------------------------------------------------- bad input


def test_bad_input_raises_and_changes_nothing():
    a = np.ones((4, 3), np.float32)
    b = np.ones((3, 5), np.float32)
    c = np.full((4, 5), 9.0, np.float32)
    with pytest.raises(TypeError, match="a: expected dtype float32, got float64"):
        ops.sgemm(a.astype(np.float64), b, c)
    with pytest.raises(TypeError, match="b: expected a numpy.ndarray"):
        ops.sgemm(a, [[1.0]], c)
    with pytest.raises(ValueError, match=r"inner dimensions differ"):
        ops.sgemm(a, b.T.copy(), c)
    with pytest.raises(ValueError, match=r"c: expected shape \(4, 5\), got \(5, 4\)"):
        ops.sgemm(a, b, c.T.copy())
    with pytest.raises(ValueError, match="c: required when beta != 0"):
        ops.sgemm(a, b, beta=1.0)
    with pytest.raises(ValueError, match="last axis must be contiguous"):
        ops.sgemm(np.ones((3, 4), np.float32).T, b, c)
    with pytest.raises(ValueError, match="c: must not overlap a"):
        big = np.ones((4, 8), np.float32)
        ops.sgemm(big[:, :3], b, big[:, 3:])
    ro = c.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="c: must be writable"):
        ops.sgemm(a, b, ro)
    with pytest.raises(ValueError, match="expected a 2-D array"):
        ops.sgemm_bf16(np.ones(3, np.float32), b, c)
    with pytest.raises(ValueError, match="repeats"):
        ops.sgemm(a, b, c, repeats=0)
    assert np.all(c == 9.0)

    p = np.ones(10, np.float32)
    with pytest.raises(ValueError, match="grad: expected 10 elements"):
        ops.adam_step(p, np.ones(9, np.float32), np.zeros(10, np.float32),
                      np.zeros(10, np.float32), np.zeros(1, np.float32))  # fmt: skip
    with pytest.raises(ValueError, match="beta1"):
        ops.adam_step(p, p.copy(), np.zeros(10, np.float32), np.zeros(10, np.float32),
                      np.zeros(1, np.float32), beta1=1.0)  # fmt: skip
    with pytest.raises(ValueError, match="exp_avg: must not overlap param"):
        ops.adam_step(p, p.copy(), p, np.zeros(10, np.float32), np.zeros(1, np.float32))
    assert np.all(p == 1.0)

    with pytest.raises(ValueError, match=r"dy: expected shape \(4, 5\)"):
        ops.linear_backward(a, b, np.ones((4, 6), np.float32))
    with pytest.raises(ValueError, match="accumulate=True needs dw and db"):
        ops.linear_backward(a, b, np.ones((4, 5), np.float32), accumulate=True)
    with pytest.raises(ValueError, match="kind: expected 'relu' or 'silu'"):
        ops.activation_forward(np.ones(3, np.float32), "tanh")
    h = np.ones(3, np.float32)
    with pytest.raises(ValueError, match="pre: expected 3 elements"):
        ops.activation_forward(h, "silu", np.ones(4, np.float32))
    with pytest.raises(ValueError, match="pre: must not overlap x"):
        ops.activation_forward(h, "silu", h)
    assert np.all(h == 1.0)
