"""pinnlsr.qr: R factors, Cholesky-QR3, the streaming TSQR, against Householder QR (float64)."""
import math

import pytest
import torch

from pinnlsr import qr


def test_streaming_tsqr_matches_qr():
    a = torch.randn(103, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    acc = qr.StreamingR(buffer_rows=10)
    for i in range(0, 103, 9):
        acc.add(a[i:i + 9])
    r = acc.result()
    r_ref = torch.linalg.qr(a, mode="r")[1]
    assert (r.T @ r - a.T @ a).abs().max() <= 1e-12 * (a.T @ a).abs().max()
    assert (r.abs() - r_ref.abs()).abs().max() <= 1e-12 * r_ref.abs().max()


@pytest.mark.parametrize("cond", [1e2, 1e10])
def test_cholesky_qr_matches_householder(cond):
    gen = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(400, 30, generator=gen, dtype=torch.float64))
    w, _ = torch.linalg.qr(torch.randn(30, 30, generator=gen, dtype=torch.float64))
    a = u * torch.logspace(0, -math.log10(cond), 30, dtype=torch.float64) @ w.T
    q, r = qr.cholesky_qr(a)
    assert (q.T @ q - torch.eye(30, dtype=torch.float64)).abs().max() <= 1e-13
    assert (q @ r - a).abs().max() <= 1e-14
    r_ref = torch.linalg.qr(a, mode="r")[1]  # the same R up to the sign of each row
    assert (r.abs() - r_ref.abs()).abs().max() <= 1e-13
    assert (qr.fast_r_factor(a, force=True) - r).abs().max() == 0
    q_forced = qr.orthonormalize(a, force=True)
    assert (q_forced @ (q_forced.T @ a) - a).abs().max() <= 1e-14
    # rank-deficient: an orthonormal Q with QR = a, or None where rounding (which varies with the
    # BLAS thread count) fails the orthonormality check; either way orthonormalize() gives a valid Q
    dup = torch.cat([a, a[:, :1]], 1)
    result = qr.cholesky_qr(dup)
    if result is not None:
        q2, r2 = result
        assert (q2.T @ q2 - torch.eye(31, dtype=torch.float64)).abs().max() <= 1e-13
        assert (q2 @ r2 - dup).abs().max() <= 1e-14
    q3 = qr.orthonormalize(dup, force=True)
    assert (q3.T @ q3 - torch.eye(q3.shape[1], dtype=torch.float64)).abs().max() <= 1e-13
    assert (q3 @ (q3.T @ dup) - dup).abs().max() <= 1e-14
    # a zero column: None, and the callers use Householder QR
    zero = torch.cat([a, torch.zeros(400, 1, dtype=torch.float64)], 1)
    assert qr.cholesky_qr(zero) is None
    assert (qr.fast_r_factor(zero, force=True) - torch.linalg.qr(zero, mode="r")[1]).abs().max() == 0


def test_canonical_svd_ignores_row_signs():
    a = torch.randn(6, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    flipped = a * torch.tensor([1.0, -1, 1, -1, -1, 1], dtype=torch.float64).unsqueeze(1)
    _, s1, vh1 = qr.canonical_svd(a)
    _, s2, vh2 = qr.canonical_svd(flipped)
    torch.testing.assert_close(s1, s2, rtol=1e-13, atol=0)
    torch.testing.assert_close(vh1, vh2, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(120, 9), (3, 120, 9), (14, 9), (9, 14)])
def test_right_svd_equals_the_full_svd(shape):
    # tall (through R), a stack of tall ones, and shapes where the SVD is taken directly
    gen = torch.Generator().manual_seed(4)
    a = torch.randn(*shape, generator=gen, dtype=torch.float64) * torch.logspace(0, -6, shape[-1], dtype=torch.float64)
    s, vh = qr.right_svd(a)
    u_ref, s_ref, vh_ref = torch.linalg.svd(a, full_matrices=False)
    torch.testing.assert_close(s, s_ref, rtol=1e-13, atol=0)
    # the same right singular vectors up to the sign of each (the values are well separated)
    sign = torch.sign((vh * vh_ref).sum(-1, keepdim=True))
    torch.testing.assert_close(vh * sign, vh_ref, rtol=0, atol=1e-9)
    # and A V = U S with orthonormal U: they are singular vectors of A itself
    av = a @ vh.mT
    torch.testing.assert_close((av / s.unsqueeze(-2)).mT @ (av / s.unsqueeze(-2)),
                               torch.eye(s.shape[-1], dtype=torch.float64).expand_as(vh[..., :, :s.shape[-1]]),
                               rtol=0, atol=1e-9)
