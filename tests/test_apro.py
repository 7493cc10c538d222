import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import minimum_spanning_tree

import torch

from models.apro import grid_edges, tree_propagation
from stages.apro import global_propagation, local_propagation  # the contract's names
from tests.reference_apro import global_propagation_python


def _minimax_over(a, b, w, n):
    """C[s, u]: the largest edge weight on the path s–u of the tree (a, b, w), by a walk from every node."""
    adj = {i: [] for i in range(n)}
    for i, j, x in zip(a, b, w):
        adj[i].append((j, x))
        adj[j].append((i, x))
    C = np.zeros((n, n))
    for s in range(n):
        stack, seen = [(s, 0.0)], {s}
        while stack:
            u, m = stack.pop()
            C[s, u] = m
            for v, x in adj[u]:
                if v not in seen:
                    seen.add(v)
                    stack.append((v, max(m, x)))
    return C


def _minimax_brute(guide):
    a, b, w = grid_edges(guide)
    n = guide.shape[0] * guide.shape[1]
    mst = minimum_spanning_tree(coo_matrix((w + 1e-12, (a, b)), shape=(n, n))).tocoo()
    return _minimax_over(mst.row, mst.col, mst.data - 1e-12, n)


def test_global_propagation_equals_brute_force_minimax():
    rng = np.random.default_rng(1)
    g = rng.random((6, 5, 3))
    v = rng.random((2, 6, 5))
    C = _minimax_brute(g)
    W = np.exp(-C / 0.4**2)
    ref = (v.reshape(2, -1) @ W.T) / W.sum(1)
    out = global_propagation(g, v, zeta=0.4)
    np.testing.assert_allclose(out.reshape(2, -1), ref, atol=1e-10)


def test_local_propagation_brute_force():
    rng = np.random.default_rng(2)
    img = rng.random((5, 6, 3))
    v = rng.random((2, 5, 6))
    zeta, k = 0.5, 3
    y = v.copy()
    for _ in range(2):
        new = np.zeros_like(y)
        for i in range(5):
            for j in range(6):
                ws, vs = [], []
                for di in range(-1, 2):
                    for dj in range(-1, 2):
                        a, b = i + di, j + dj
                        if 0 <= a < 5 and 0 <= b < 6:
                            ws.append(np.exp(-((img[i, j] - img[a, b]) ** 2).sum() / zeta**2))
                            vs.append(y[:, a, b])
                ws = np.array(ws) / np.sum(ws)
                new[:, i, j] = (ws[:, None] * np.array(vs)).sum(0)
        y = new
    out = local_propagation(torch.tensor(img).permute(2, 0, 1)[None], torch.tensor(v)[None], zeta=zeta, num_iter=2, kernel_size=k)[0].numpy()
    np.testing.assert_allclose(out, y, atol=1e-5)


def test_global_propagation_matches_the_python_union_find_within_1e9():
    rng = np.random.default_rng(3)
    g = rng.random((40, 33, 3))
    v = rng.random((4, 40, 33))
    np.testing.assert_allclose(global_propagation(g, v, 0.2), global_propagation_python(g, v, 0.2), rtol=0, atol=1e-9)


def test_feature_pass_is_gp_over_the_image_tree_reweighted_by_the_features():
    """GP on the features runs over the image's MST (not the features' own): brute-force minimax on that tree."""
    rng = np.random.default_rng(4)
    g, f = rng.random((5, 4, 3)), rng.random((5, 4, 2))
    v = rng.random((2, 5, 4))
    a, b, w = grid_edges(g)
    _, tree = tree_propagation(a, b, w, v.reshape(2, -1).T, 0.3)
    assert tree.sum() == 19  # a spanning tree of 20 pixels
    fa, fb, fw = grid_edges(f)
    C = _minimax_over(fa[tree], fb[tree], fw[tree], 20)
    first = global_propagation(g, v, 0.3).reshape(2, -1)
    W = np.exp(-C / 0.7**2)
    ref = (first @ W.T) / W.sum(1)
    out = global_propagation(g, v, 0.3, features=f, zeta_f=0.7)
    np.testing.assert_allclose(out.reshape(2, -1), ref, atol=1e-10)


def test_high_level_pass_without_features_is_reweighted_by_the_first_pass_output():
    """APro's released code: the second GP runs over the image's MST with edge weights ‖y_a − y_b‖² of the image
    pass's own output y (brute-force minimax on that tree)."""
    rng = np.random.default_rng(5)
    g, v = rng.random((5, 4, 3)), rng.random((3, 5, 4))
    a, b, w = grid_edges(g)
    _, tree = tree_propagation(a, b, w, v.reshape(3, -1).T, 0.3)
    first = global_propagation(g, v, 0.3).reshape(3, -1)
    ya, yb = first[:, a[tree]], first[:, b[tree]]
    C = _minimax_over(a[tree], b[tree], ((ya - yb) ** 2).sum(0), 20)
    W = np.exp(-C / 0.07**2)
    ref = (first @ W.T) / W.sum(1)
    out = global_propagation(g, v, 0.3, zeta_f=0.07)
    np.testing.assert_allclose(out.reshape(3, -1), ref, atol=1e-10)
    assert np.abs(out.reshape(3, -1) - first).max() > 1e-3  # the pass does something


def _tiny_net_and_batch():
    from models.segmentation import segmentation_net
    torch.manual_seed(0)
    net = segmentation_net(backbone="resnet18", channels=[8, 8, 8, 8], weights=None).eval()
    images = torch.randn(2, 3, 24, 28)
    labels = torch.full((2, 24, 28), 255, dtype=torch.long)
    labels[0, 3:6, 4:9] = 12
    labels[1, 10:12, :] = 0
    return net, images, labels


def _apro_cfg(**kw):
    from models.apro import AProConfig
    return AProConfig(**{"num_iter": 3, **kw})


def test_apro_without_propagation_is_the_partial_cross_entropy_baseline():
    from models.apro import AProLoss
    from stages.train_segmentation import segmentation_loss
    net, images, labels = _tiny_net_and_batch()
    out = AProLoss(_apro_cfg(propagation="none"))(net, (images, labels))
    torch.testing.assert_close(out["loss"], segmentation_loss(net, (images, labels))["loss"])
    assert out["unary"].item() == 0.0


def test_apro_unary_terms_are_l1_to_the_propagated_predictions():
    """GP-LP-P: |P − GP(P)| + |P − LP(P)|; GP-LP-C: |P − LP(GP(P))|; LP-GP-C: |P − GP(LP(P))| (GP on image, then
    features), over the unlabelled pixels."""
    from models.apro import AProLoss, grid_edges, rgb01
    net, images, labels = _tiny_net_and_batch()
    cfg = _apro_cfg(zeta_f=0.5, high_level="features")
    with torch.no_grad():
        logits, feats = net.logits_and_features(images)
    p = logits.softmax(1).double()
    rgb = rgb01(images)
    f = torch.nn.functional.interpolate(feats, size=p.shape[-2:], mode="bilinear", align_corners=False)
    fn = torch.nn.functional.normalize(f, dim=1)

    def median_scaled(guide):  # relative edges = the guide divided by √(median non-zero neighbour distance)
        w = grid_edges(guide)[2]
        return guide / np.sqrt(np.median(w[w > 0]))

    def gp(v):
        return torch.from_numpy(np.stack([global_propagation(median_scaled(rgb[i].permute(1, 2, 0).double().numpy()), v[i].numpy(), cfg.zeta_g,
                                                             fn[i].permute(1, 2, 0).double().numpy(), cfg.zeta_f)
                                          for i in range(len(v))]))

    def lp(v):
        return local_propagation(rgb, v, cfg.zeta_s, cfg.num_iter, cfg.kernel_size)

    unlabelled = labels == 255

    def l1(t):  # over the unlabelled pixels
        return ((p - t).abs().sum(1) * unlabelled).sum().item() / unlabelled.sum().item()

    expect = {"gp-lp-p": l1(gp(p)) + l1(lp(p)), "gp-lp-c": l1(lp(gp(p))), "lp-gp-c": l1(gp(lp(p))), "gp": l1(gp(p)),
              "lp": l1(lp(p))}
    for mode, value in expect.items():
        out = AProLoss(_apro_cfg(propagation=mode, zeta_f=0.5, high_level="features"))(net, (images, labels))
        assert abs(out["unary"].item() - value) < 1e-5, (mode, out["unary"].item(), value)
        # L = L_g + 0.4·L_u (the default weight, TEL's)
        assert abs(out["loss"].item() - out["partial_ce"].item() - 0.4 * value) < 1e-5, mode
    # high_level=prediction (the default): the second pass re-weighted by the image pass's output, not the features
    by_output = torch.from_numpy(np.stack([global_propagation(median_scaled(rgb[i].permute(1, 2, 0).double().numpy()), p[i].numpy(),
                                                              cfg.zeta_g, zeta_f=cfg.zeta_f) for i in range(len(p))]))
    out = AProLoss(_apro_cfg(propagation="gp", zeta_f=0.5))(net, (images, labels))
    assert abs(out["unary"].item() - l1(by_output)) < 1e-5
    assert abs(l1(by_output) - expect["gp"]) > 1e-4  # the two high-level guides differ here


def test_apro_targets_carry_no_gradient():
    """Y is a target: the loss's gradient equals that of CE + L1 with Y held fixed (a Y in the graph would add to it)."""
    from models.apro import AProLoss
    net, images, labels = _tiny_net_and_batch()
    net.zero_grad()
    AProLoss(_apro_cfg(propagation="lp"))(net, (images, labels))["loss"].backward()
    g1 = net.head.branches[0].weight.grad.clone()
    net.zero_grad()
    logits, _ = net.logits_and_features(images)
    p = logits.softmax(1)
    from models.apro import rgb01
    y = local_propagation(rgb01(images), p.detach(), 0.15, 3, 5)
    u = labels == 255
    loss = torch.nn.functional.cross_entropy(logits, labels, ignore_index=255) + 0.4 * ((p - y).abs().sum(1) * u).sum() / u.sum()
    loss.backward()
    torch.testing.assert_close(net.head.branches[0].weight.grad, g1)


def test_apro_loss_under_bf16_autocast_is_finite_and_close():
    """The CPU path of mixed precision: the loss in bf16 autocast stays within bf16's precision of float32's."""
    from models.apro import AProLoss
    net, images, labels = _tiny_net_and_batch()
    loss = AProLoss(_apro_cfg())
    ref = loss(net, (images, labels))["loss"].item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = loss(net, (images, labels))["loss"].float().item()
    assert np.isfinite(got) and abs(got - ref) < 0.05 * abs(ref), (got, ref)


def test_unary_term_joins_after_its_fraction_of_the_schedule():
    from models.apro import AProLoss
    from stages.train_segmentation import segmentation_loss
    net, images, labels = _tiny_net_and_batch()
    loss = AProLoss(_apro_cfg(unary_from=0.5), steps=10)
    early, late = loss(net, (images, labels), step=4), loss(net, (images, labels), step=5)
    torch.testing.assert_close(early["loss"], segmentation_loss(net, (images, labels))["loss"])
    assert early["unary"].item() == 0 and late["unary"].item() > 0
