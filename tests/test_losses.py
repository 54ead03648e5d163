"""Sub-cluster AdaCos pins eq. (1) and the AdaCos scale; mixup and the KL loss behave."""

import math

import pytest
import torch
import torch.nn.functional as F

from asd.method.losses import SubClusterAdaCos, initial_scale, kl_loss, mixup


def one_hot(labels, n):
    return F.one_hot(labels, n).float()


def reference_probs(emb, centres, s, n_sub):
    """Eq. (1) written out in float64 with plain exp and sums."""
    e = emb.double() / emb.double().norm(dim=1, keepdim=True)
    w = centres.double() / centres.double().norm(dim=1, keepdim=True)
    num = torch.exp(float(s) * (e @ w.t()))  # (B, C*S)
    denom = num.sum(dim=1, keepdim=True)
    b, k = num.shape
    return (num / denom).view(b, k // n_sub, n_sub).sum(dim=2)  # (B, C)


@pytest.fixture
def head():
    torch.manual_seed(0)
    h = SubClusterAdaCos(5, 4, 8)
    with torch.no_grad():
        h.centres.normal_()
        h.s.fill_(7.3)
    return h


def test_shapes_parameters_and_initial_scale():
    h = SubClusterAdaCos(84, 32, 128)
    assert h.centres.shape == (84 * 32, 128) and h.centres.requires_grad
    assert "s" in dict(h.named_buffers()) and "s" in h.state_dict()
    assert h.s.shape == () and math.isclose(
        h.s.item(), math.sqrt(2) * math.log(84 * 32 - 1), rel_tol=1e-6
    )
    assert initial_scale(1) == initial_scale(3) > 0  # documented fallback for C*S <= 2
    assert torch.isfinite(SubClusterAdaCos(1, 1, 4).s)
    assert h.cosine(torch.randn(3, 128)).shape == (3, 84 * 32)


def test_eq1_against_float64_reference(head):
    emb = torch.randn(6, 8, dtype=torch.float64)
    head = head.double().eval()
    ref = reference_probs(emb, head.centres.detach(), head.s, 4)
    got = head(emb).exp()
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
    # and the float32 module agrees closely with the float64 formula
    head = head.float()
    torch.testing.assert_close(head(emb.float()).exp().double(), ref, rtol=0, atol=1e-5)


def test_probabilities_sum_to_one(head):
    head.eval()
    p = head(torch.randn(10, 8)).exp()
    torch.testing.assert_close(p.sum(dim=1), torch.ones(10))


def test_single_subcluster_is_plain_adacos_cross_entropy():
    torch.manual_seed(1)
    h = SubClusterAdaCos(6, 1, 8).eval()
    emb, labels = torch.randn(7, 8), torch.randint(0, 6, (7,))
    log_p = h(emb)
    torch.testing.assert_close(log_p, torch.log_softmax(h.s * h.cosine(emb), dim=1))
    torch.testing.assert_close(
        kl_loss(log_p, one_hot(labels, 6)), F.cross_entropy(h.s * h.cosine(emb), labels)
    )


def test_scale_update_follows_adacos(head):
    torch.manual_seed(2)
    emb = torch.randn(9, 8)
    a, b = torch.randint(0, 5, (9,)), torch.randint(0, 5, (9,))
    lam = torch.rand(9)
    _, target = mixup(emb, emb, one_hot(a, 5), one_hot(b, 5), lam)
    s_old = head.s.item()
    # independent float64 estimate
    cos = F.normalize(emb.double(), dim=1) @ F.normalize(head.centres.detach().double(), dim=1).t()
    non_target = (target == 0).double().repeat_interleave(4, dim=1)
    b_avg = (torch.exp(s_old * cos) * non_target).sum(dim=1).mean()
    dominant = target.argmax(dim=1)
    own = cos.view(9, 5, 4)[torch.arange(9), dominant].max(dim=1).values
    theta_med = torch.acos(own).median()
    expected = torch.log(b_avg) / torch.cos(torch.clamp(theta_med, max=math.pi / 4))
    head.train()
    head(emb, target)
    assert head.s.item() != s_old
    assert math.isclose(head.s.item(), expected.item(), rel_tol=1e-5)


def test_scale_changes_only_in_training_with_target(head):
    emb, target = torch.randn(8, 8), one_hot(torch.randint(0, 5, (8,)), 5)
    head.eval()
    before = head.s.clone()
    for _ in range(3):
        head(emb, target)
        head(emb)
    assert torch.equal(head.s, before)  # bit-identical in eval mode
    head.train()
    head(emb)  # no target: nothing to estimate from
    assert torch.equal(head.s, before)
    head(emb, target)
    assert not torch.equal(head.s, before)
    assert head.s.item() > 0


def test_scale_survives_state_dict_round_trip(head):
    head.train()
    head(torch.randn(8, 8), one_hot(torch.randint(0, 5, (8,)), 5))
    fresh = SubClusterAdaCos(5, 4, 8)
    assert not torch.equal(fresh.s, head.s)
    fresh.load_state_dict(head.state_dict())
    assert torch.equal(fresh.s, head.s) and torch.equal(fresh.centres, head.centres)


def test_gradients_reach_embeddings_and_centres(head):
    emb = torch.randn(6, 8, requires_grad=True)
    head.train()
    target = one_hot(torch.arange(6) % 5, 5)
    loss = kl_loss(head(emb, target), target)
    loss.backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0
    assert head.centres.grad is not None and head.centres.grad.abs().sum() > 0
    assert head.s.grad is None


@pytest.mark.parametrize("n_classes,n_sub", [(1, 1), (2, 1), (3, 2), (84, 32), (600, 40)])
@pytest.mark.parametrize("kind", ["zeros", "huge", "identical", "tiny", "random"])
def test_never_nan_or_inf(n_classes, n_sub, kind):
    torch.manual_seed(3)
    dim, b = 16, 6
    emb = {
        "zeros": torch.zeros(b, dim),
        "huge": torch.full((b, dim), 1e30) * torch.randn(b, dim).sign(),
        "identical": torch.randn(1, dim).repeat(b, 1),
        "tiny": torch.randn(b, dim) * 1e-40,
        "random": torch.randn(b, dim) * 50,
    }[kind].requires_grad_()
    h = SubClusterAdaCos(n_classes, n_sub, dim)
    labels = torch.randint(0, n_classes, (b,))
    target, _ = mixup(
        one_hot(labels, n_classes),
        one_hot(labels.roll(1), n_classes),
        torch.zeros(b, 1),
        torch.zeros(b, 1),
        torch.rand(b),
    )
    for _ in range(3):  # several scale updates in a row
        log_p = h.train()(emb, target)
        loss = kl_loss(log_p, target)
        loss.backward()
        assert torch.isfinite(log_p).all() and torch.isfinite(loss)
        assert torch.isfinite(h.s) and h.s > 0
        assert torch.isfinite(emb.grad).all() and torch.isfinite(h.centres.grad).all()
    assert torch.isfinite(h.eval()(emb)).all()


def test_huge_embedding_keeps_its_direction():
    h = SubClusterAdaCos(3, 2, 4)
    e = torch.randn(2, 4)
    torch.testing.assert_close(h.cosine(e * 1e30), h.cosine(e))


def test_autocast_bf16_keeps_float32_loss(head):
    emb = torch.randn(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        log_p = head.train()(emb.bfloat16(), one_hot(torch.arange(4), 5))
    assert log_p.dtype == torch.float32 and torch.isfinite(log_p).all()


def test_bad_shapes_are_clear_errors(head):
    with pytest.raises(ValueError, match=r"\(B, 8\)"):
        head(torch.randn(3, 7))
    with pytest.raises(ValueError, match="targets"):
        head(torch.randn(3, 8), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="max_angle"):
        SubClusterAdaCos(2, 2, 4, max_angle=2.0)


def test_kl_loss_values():
    t = torch.tensor([[1.0, 0.0, 0.0], [0.25, 0.75, 0.0]])
    p = torch.tensor([[0.5, 0.25, 0.25], [0.25, 0.75, 0.0]])
    log_p = torch.log(p)  # has a -inf where the target is 0
    expected = (math.log(2.0) + 0.0) / 2
    assert math.isclose(kl_loss(log_p, t).item(), expected, rel_tol=1e-6)
    assert kl_loss(torch.log(t[1:].clamp_min(1e-30)), t[1:]).abs() < 1e-6


def test_mixup_labels_and_lambda():
    g = torch.Generator().manual_seed(4)
    lam = torch.rand(1000, generator=g)
    assert lam.shape == (1000,) and lam.dtype == torch.float32
    assert (lam >= 0).all() and (lam <= 1).all() and 0.4 < lam.mean() < 0.6
    n, c = 1000, 7
    ya, yb = (
        one_hot(torch.randint(0, c, (n,), generator=g), c),
        one_hot(torch.randint(0, c, (n,), generator=g), c),
    )
    for shape in [(n, 3), (n, 1, 5, 4), (n, 2, 3, 4, 5)]:
        xa, xb = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
        x, y = mixup(xa, xb, ya, yb, lam)
        assert x.shape == xa.shape and y.shape == (n, c)
        torch.testing.assert_close(y.sum(dim=1), torch.ones(n))
        assert (y >= 0).all() and (y <= 1).all()
        i = 17
        torch.testing.assert_close(x[i], lam[i] * xa[i] + (1 - lam[i]) * xb[i])
    x, y = mixup(xa, xb, ya, yb, torch.ones(n))
    assert torch.equal(x, xa) and torch.equal(y, ya)
    with pytest.raises(ValueError, match="lam"):
        mixup(xa, xb, ya, yb, lam[:10])


def test_separable_clusters_are_learned_with_mixup():
    """A linear layer on gaussian clusters, trained by mixup + KL, reaches ~100% accuracy."""
    torch.manual_seed(5)
    g = torch.Generator().manual_seed(5)
    n_classes, n_sub, dim_in, dim = 6, 3, 12, 8
    means = torch.randn(n_classes, dim_in, generator=g) * 3
    labels = torch.arange(n_classes).repeat_interleave(50)
    x = means[labels] + torch.randn(len(labels), dim_in, generator=g)
    y = one_hot(labels, n_classes)
    net = torch.nn.Linear(dim_in, dim)
    head = SubClusterAdaCos(n_classes, n_sub, dim)
    opt = torch.optim.Adam([*net.parameters(), *head.parameters()], lr=1e-2)
    s0 = head.s.item()

    def clean_loss():
        head.eval()
        with torch.no_grad():
            log_p = head(net(x))
        return kl_loss(log_p, y).item(), (log_p.argmax(1) == labels).float().mean().item()

    loss_before, acc_before = clean_loss()
    losses = []
    for _ in range(300):
        a = torch.randint(0, len(x), (32,), generator=g)
        b = torch.randint(0, len(x), (32,), generator=g)
        xm, ym = mixup(x[a], x[b], y[a], y[b], torch.rand(32, generator=g))
        head.train()
        loss = kl_loss(head(net(xm), ym), ym)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    loss_after, acc_after = clean_loss()
    assert acc_after > 0.98 and acc_after > acc_before
    assert loss_after < 0.5 * loss_before
    assert sum(losses[-30:]) < 0.7 * sum(losses[:30])
    assert head.s.item() != s0
