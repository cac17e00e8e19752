"""Probes on pooled embeddings: a linear probe (multinomial logistic regression, optax; per-class sigmoids for
multi-label; ridge for regression) and a weighted kNN (cosine similarity, DINO-style exp(s/T) votes; for multi-label
and regression the vote-weighted mean of the neighbours' labels), with stratification-free k-fold cross-validation.

Features are standardised with the training fold's mean and std. The linear probe trains full-batch with Adam
(lr 0.02 as the predecessor Rose's linear-probe setting) and a small L2 penalty.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax


def _standardise(train, test):
    mu, sd = train.mean(0), train.std(0) + 1e-6
    return (train - mu) / sd, (test - mu) / sd


def linear_probe(train_x, train_y, test_x, num_classes, steps=300, lr=0.02, l2=1e-4, seed=0, multilabel=False):
    """→ predicted classes int [N_test] (and the fitted (W [D, K], b [K]) as a second value). multilabel: train_y
    is 0/1 [N, K], per-class sigmoid cross-entropy, and the first value is the probabilities [N_test, K]."""
    xtr, xte = _standardise(np.asarray(train_x, np.float32), np.asarray(test_x, np.float32))
    ytr = jnp.asarray(train_y, jnp.float32 if multilabel else jnp.int32)
    d = xtr.shape[1]
    params = dict(w=jax.random.normal(jax.random.key(seed), (d, num_classes)) * 0.01, b=jnp.zeros(num_classes))
    tx = optax.adam(lr)

    def loss_fn(p):
        logits = xtr @ p["w"] + p["b"]
        data = (optax.sigmoid_binary_cross_entropy(logits, ytr).mean() if multilabel else
                optax.softmax_cross_entropy_with_integer_labels(logits, ytr).mean())
        return data + l2 * jnp.sum(p["w"] ** 2)

    @jax.jit
    def fit(params):
        def body(carry, _):
            p, s = carry
            g = jax.grad(loss_fn)(p)
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        (p, _), _ = jax.lax.scan(body, (params, tx.init(params)), None, length=steps)
        return p

    params = fit(params)
    logits = jnp.asarray(xte) @ params["w"] + params["b"]
    pred = np.asarray(jax.nn.sigmoid(logits) if multilabel else jnp.argmax(logits, axis=-1))
    return pred, (np.asarray(params["w"]), np.asarray(params["b"]))


def ridge(train_x, train_y, test_x, alpha=1.0):
    """Ridge regression on standardised features (closed form, intercept unpenalised) → predictions [N_test]."""
    xtr, xte = _standardise(np.asarray(train_x, np.float64), np.asarray(test_x, np.float64))
    y = np.asarray(train_y, np.float64)
    w = np.linalg.solve(xtr.T @ xtr + alpha * np.eye(xtr.shape[1]), xtr.T @ (y - y.mean()))
    return xte @ w + y.mean()


def neighbours(train_x, test_x, k, temperature=0.07):
    """The k most cosine-similar training samples of each test sample and their vote weights exp(sim / T):
    (indices [N_test, k], weights [N_test, k])."""
    a = np.asarray(train_x, np.float64)
    b = np.asarray(test_x, np.float64)
    a = a / (np.linalg.norm(a, axis=1, keepdims=True) + 1e-12)
    b = b / (np.linalg.norm(b, axis=1, keepdims=True) + 1e-12)
    sim = b @ a.T
    k = min(k, len(a))
    top = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return top, np.exp(np.take_along_axis(sim, top, 1) / temperature)


def knn_mean(train_x, train_y, test_x, k=20, temperature=0.07):
    """The vote-weighted mean of the k nearest neighbours' labels: [N_test] (regression) or [N_test, K] (0/1
    multi-label labels → per-class scores)."""
    top, w = neighbours(train_x, test_x, k, temperature)
    y = np.asarray(train_y, np.float64)[top]  # [N, k] or [N, k, K]
    w = w / w.sum(1, keepdims=True)
    return np.einsum("nk,nk...->n...", w, y)


def knn(train_x, train_y, test_x, num_classes, k=20, temperature=0.07):
    """Weighted kNN: the k most cosine-similar training samples vote with weight exp(sim / T) → int [N_test]."""
    top, w = neighbours(train_x, test_x, k, temperature)
    votes = np.zeros((len(top), num_classes))
    for i in range(len(top)):
        np.add.at(votes[i], np.asarray(train_y)[top[i]], w[i])
    return votes.argmax(1)


def cross_validate(x, y, method="linear", folds=5, seed=0, **kwargs):
    """k-fold CV (folds capped at N) → dict(accuracy, per-fold accuracies, predictions in sample order)."""
    x, y = np.asarray(x), np.asarray(y, np.int64)
    if len(x) < 2:
        raise ValueError(f"need at least 2 labelled samples for cross-validation, got {len(x)}")
    num_classes = int(y.max()) + 1
    folds = min(folds, len(x))
    order = np.random.default_rng(seed).permutation(len(x))
    pred = np.full(len(x), -1)
    accs = []
    for f in range(folds):
        test = order[f::folds]
        train = np.setdiff1d(order, test)
        if method == "linear":
            p, _ = linear_probe(x[train], y[train], x[test], num_classes, **kwargs)
        elif method == "knn":
            p = knn(x[train], y[train], x[test], num_classes, **kwargs)
        else:
            raise ValueError(f"unknown probe method {method!r} (linear | knn)")
        pred[test] = p
        accs.append(float((p == y[test]).mean()))
    return dict(method=method, folds=folds, accuracy=float((pred == y).mean()), fold_accuracy=accs,
                predictions=pred.tolist())
