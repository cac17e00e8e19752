"""Classification probes on pooled embeddings: a linear probe (multinomial logistic regression, optax) and a
weighted kNN (cosine similarity, DINO-style exp(s/T) votes), with stratification-free k-fold cross-validation.

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


def linear_probe(train_x, train_y, test_x, num_classes, steps=300, lr=0.02, l2=1e-4, seed=0):
    """→ predicted classes int [N_test] (and the fitted (W [D, K], b [K]) as a second value)."""
    xtr, xte = _standardise(np.asarray(train_x, np.float32), np.asarray(test_x, np.float32))
    ytr = jnp.asarray(train_y, jnp.int32)
    d = xtr.shape[1]
    params = dict(w=jax.random.normal(jax.random.key(seed), (d, num_classes)) * 0.01, b=jnp.zeros(num_classes))
    tx = optax.adam(lr)

    def loss_fn(p):
        logits = xtr @ p["w"] + p["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, ytr).mean() + l2 * jnp.sum(p["w"] ** 2)

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
    pred = np.asarray(jnp.argmax(jnp.asarray(xte) @ params["w"] + params["b"], axis=-1))
    return pred, (np.asarray(params["w"]), np.asarray(params["b"]))


def knn(train_x, train_y, test_x, num_classes, k=20, temperature=0.07):
    """Weighted kNN: the k most cosine-similar training samples vote with weight exp(sim / T) → int [N_test]."""
    a = np.asarray(train_x, np.float64)
    b = np.asarray(test_x, np.float64)
    a = a / (np.linalg.norm(a, axis=1, keepdims=True) + 1e-12)
    b = b / (np.linalg.norm(b, axis=1, keepdims=True) + 1e-12)
    sim = b @ a.T
    k = min(k, len(a))
    top = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    votes = np.zeros((len(b), num_classes))
    for i in range(len(b)):
        np.add.at(votes[i], np.asarray(train_y)[top[i]], np.exp(sim[i, top[i]] / temperature))
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
