"""torchfit.sklearn: the estimators follow scikit-learn's rules and train through torchfit."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import load_iris, make_classification, make_regression
from sklearn.metrics import r2_score
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from torchfit.sklearn import FromData, TorchfitClassifier, TorchfitRegressor



class MLP(nn.Module):
    def __init__(self, n_in: int = 4, hidden: int = 16, n_out: int = 3):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))

    def forward(self, x):
        return self.layers(x)


def iris():
    X, y = load_iris(return_X_y=True)
    return StandardScaler().fit_transform(X), y


def clf(**kw):
    params = dict(module__n_in=4, module__hidden=16, module__n_out=3, lr=0.03, epochs=15, seed=0)
    params.update(kw)
    return TorchfitClassifier(MLP, **params)


def test_params_are_stored_as_given_and_clone_keeps_them():
    metrics = ["accuracy"]
    est = clf(metrics=metrics, optimizer=torch.optim.SGD, optimizer__momentum=0.9)
    params = est.get_params()
    assert params["module__hidden"] == 16 and params["optimizer__momentum"] == 0.9
    assert params["metrics"] is metrics and params["optimizer"] is torch.optim.SGD
    twin = clone(est)
    assert twin is not est and twin.get_params()["module__hidden"] == 16
    assert twin.get_params().keys() == params.keys()
    twin.set_params(module__hidden=4, lr=0.5, module__dropout=0.1)  # a routed name not given before
    assert (twin.module__hidden, twin.lr, twin.module__dropout) == (4, 0.5, 0.1)
    assert est.module__hidden == 16 and not hasattr(est, "module__dropout")


def test_unknown_parameter_names_the_prefixes_at_fit():
    est = TorchfitClassifier(MLP, hidden=3)  # scikit-learn's rule: __init__ stores, fit checks
    X, y = iris()
    with pytest.raises(TypeError, match="'hidden'.*module__hidden"):
        est.fit(X, y)
    assert not hasattr(est, "model_")


def test_fit_predict_labels_history_and_model():
    X, y = iris()
    labels = np.array(["setosa", "versicolor", "virginica"])[y]
    est = clf().fit(X, labels)
    assert list(est.classes_) == ["setosa", "versicolor", "virginica"]
    pred = est.predict(X)
    assert pred.dtype == labels.dtype and set(pred) <= set(labels)
    assert est.score(X, labels) > 0.85
    assert list(est.history_["epoch"]) == list(range(1, 16))
    assert "val_loss" not in est.history_.columns  # no hidden validation split
    assert est.n_features_in_ == 4
    assert est.model_.epoch == 15


def test_seed_makes_fits_reproducible_and_leaves_the_caller_rng_alone():
    X, y = iris()
    state = torch.get_rng_state()
    a, b = clf().fit(X, y), clf().fit(X, y)
    assert torch.equal(state, torch.get_rng_state())
    for k, v in a.model_.net.state_dict().items():
        assert torch.equal(v, b.model_.net.state_dict()[k])
    c = clf(seed=1).fit(X, y)
    assert not torch.equal(a.model_.net.layers[0].weight, c.model_.net.layers[0].weight)


def test_every_fit_builds_a_fresh_net():
    X, y = iris()
    est = clf(epochs=2)
    first = est.fit(X, y).model_
    second = est.fit(X, y).model_
    assert first is not second and first.net is not second.net
    assert second.epoch == 2  # not 4: nothing continues from the previous fit


def test_predict_proba_rows_sum_to_one_and_match_softmax():
    X, y = iris()
    est = clf().fit(X, y)
    proba = est.predict_proba(X)
    assert proba.shape == (150, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    logits = est.model_.predict(torch.tensor(X, dtype=torch.float32)).double()
    np.testing.assert_allclose(proba, logits.softmax(dim=1).numpy())
    np.testing.assert_array_equal(est.predict(X), proba.argmax(axis=1))


def test_binary_single_output_with_bce_uses_sigmoid():
    X, y = make_classification(n_samples=120, n_features=5, random_state=0)
    est = TorchfitClassifier(MLP, module__n_in=5, module__n_out=1, loss=nn.BCEWithLogitsLoss, lr=0.05,
                             epochs=10, seed=0).fit(X, y * 2 + 5)  # labels 5 and 7
    proba = est.predict_proba(X)
    assert proba.shape == (120, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    logit = est.model_.predict(torch.tensor(X, dtype=torch.float32)).double().reshape(-1)
    np.testing.assert_allclose(proba[:, 1], torch.sigmoid(logit).numpy())
    np.testing.assert_array_equal(est.predict(X), np.where(logit.numpy() >= 0, 7, 5))
    assert est.score(X, y * 2 + 5) > 0.8


def test_bce_with_three_classes_is_refused():
    X, y = iris()
    with pytest.raises(ValueError, match="binary.*3 classes"):
        clf(loss=nn.BCEWithLogitsLoss(), module__n_out=1).fit(X, y)


def test_module_must_be_a_factory():
    X, y = iris()
    with pytest.raises(TypeError, match="module must be a factory.*module=MyNet"):
        TorchfitClassifier(MLP()).fit(X, y)


def test_cross_val_score_three_folds():
    X, y = iris()
    scores = cross_val_score(clf(), X, y, cv=3)
    assert scores.shape == (3,) and scores.min() > 0.8, scores


def test_grid_search_over_lr_and_hidden_width():
    X, y = iris()
    search = GridSearchCV(clf(epochs=8), {"lr": [1e-4, 0.05], "module__hidden": [2, 16]}, cv=3).fit(X, y)
    tried = search.cv_results_["params"]
    assert {(p["lr"], p["module__hidden"]) for p in tried} == {(1e-4, 2), (1e-4, 16), (0.05, 2), (0.05, 16)}
    assert search.best_params_["lr"] == 0.05  # 1e-4 barely moves in 8 epochs
    assert search.best_estimator_.model_.net.layers[0].out_features == search.best_params_["module__hidden"]


def test_inside_a_pipeline_with_a_scaler():
    X, y = load_iris(return_X_y=True)
    pipe = make_pipeline(StandardScaler(), clf())
    pipe.fit(X, y)
    assert pipe.score(X, y) > 0.85
    search = GridSearchCV(pipe, {"torchfitclassifier__module__hidden": [4, 8]}, cv=3).fit(X, y)
    assert search.best_params_["torchfitclassifier__module__hidden"] in (4, 8)


def test_regressor_r2_and_1d_predictions():
    X, y = make_regression(n_samples=200, n_features=5, noise=5.0, random_state=0)
    y = y / y.std()
    reg = TorchfitRegressor(MLP, module__n_in=5, module__hidden=32, module__n_out=1, lr=0.01, epochs=40,
                            seed=0, metrics=["mae"])
    reg.fit(X, y)
    pred = reg.predict(X)
    assert pred.shape == (200,)
    assert reg.score(X, y) == pytest.approx(r2_score(y, pred))
    assert reg.score(X, y) > 0.9
    assert "mae" in reg.history_.columns


def test_regressor_2d_targets():
    X, y = make_regression(n_samples=80, n_features=3, n_targets=2, random_state=0)
    reg = TorchfitRegressor(nn.Linear, module__in_features=3, module__out_features=2, epochs=2, seed=0).fit(X, y)
    assert reg.predict(X).shape == (80, 2)


def test_predict_checks_the_row_shape():
    X, y = iris()
    est = clf(epochs=1).fit(X, y)
    with pytest.raises(ValueError, match="X has 3 features, but TorchfitClassifier is expecting 4 features"):
        est.predict(X[:, :3])


def test_images_keep_their_shape_and_are_checked():
    from sklearn.datasets import load_digits

    digits = load_digits()
    X, y = digits.images[:120, None] / 16.0, digits.target[:120]  # (N, 1, 8, 8)
    conv = lambda: nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    est = TorchfitClassifier(conv, lr=0.01, epochs=5, seed=0).fit(X, y)
    assert est.predict(X).shape == (120,) and est.score(X, y) > 0.5
    with pytest.raises(ValueError, match=r"rows of shape \(1, 7, 7\).*\(1, 8, 8\)"):
        est.predict(X[:, :, :7, :7])


def test_continuous_targets_are_refused_by_the_classifier():
    X, y = iris()
    with pytest.raises(ValueError, match="continuous"):
        clf().fit(X, y + 0.5)


def test_read_only_arrays_are_accepted(recwarn):
    X, y = iris()
    X.setflags(write=False)
    clf(epochs=1).fit(X, y).predict(X)
    assert not [w for w in recwarn if "not writable" in str(w.message)]


def test_a_fitted_estimator_pickles():
    import pickle

    X, y = iris()
    est = clf(epochs=2).fit(X, y)
    again = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(again.predict_proba(X), est.predict_proba(X))
    assert again.history_.equals(est.history_)


# ------------------------------------------------------------------ sizes from the data
def test_from_data_fills_the_factory_arguments_at_each_fit():
    est = TorchfitClassifier(MLP, module__n_in=FromData("n_features_in"), module__n_out=FromData("n_classes"),
                             module__hidden=8, lr=0.03, epochs=15, seed=0)
    X, y = iris()
    est.fit(X, y)
    assert (est.model_.net.layers[0].in_features, est.model_.net.layers[2].out_features) == (4, 3)
    assert est.n_classes_ == 3 and est.score(X, y) > 0.85
    X2, y2 = make_classification(n_samples=60, n_features=7, n_informative=4, n_classes=2, random_state=0)
    twin = clone(est).fit(X2, y2)  # new data, new sizes; the parameters stay as given
    assert (twin.model_.net.layers[0].in_features, twin.model_.net.layers[2].out_features) == (7, 2)
    assert twin.get_params()["module__n_in"] == FromData("n_features_in")


def test_from_data_n_outputs_follows_the_loss_and_the_targets():
    X, y = make_classification(n_samples=60, n_features=5, random_state=0)
    binary = TorchfitClassifier(MLP, module__n_in=FromData("n_features_in"), module__n_out=FromData("n_outputs"),
                                loss=nn.BCEWithLogitsLoss, epochs=2, seed=0).fit(X, y)
    assert binary.model_.net.layers[2].out_features == 1
    Xr, yr = make_regression(n_samples=40, n_features=3, n_targets=2, random_state=0)
    reg = TorchfitRegressor(nn.Linear, module__in_features=FromData("n_features_in"),
                            module__out_features=FromData("n_outputs"), epochs=2, seed=0).fit(Xr, yr)
    assert reg.n_outputs_ == 2 and reg.predict(Xr).shape == (40, 2)
    with pytest.raises(ValueError, match=r"module__out_features=FromData\('n_classes'\): TorchfitRegressor does not "
                                         r"know n_classes; it knows \['input_shape', 'n_features_in', 'n_outputs'\]"):
        TorchfitRegressor(nn.Linear, module__in_features=3, module__out_features=FromData("n_classes")).fit(Xr, yr)
    with pytest.raises(ValueError, match="FromData\\('classes'\\): the figures fit knows are"):
        FromData("classes")


def test_without_a_module_the_default_mlp_is_sized_from_the_data():
    X, y = iris()
    est = TorchfitClassifier(lr=0.03, epochs=15, seed=0, module__hidden=16).fit(X, y)
    assert [type(m).__name__ for m in est.model_.net] == ["Flatten", "Linear", "ReLU", "Linear"]
    assert (est.model_.net[1].in_features, est.model_.net[1].out_features, est.model_.net[3].out_features) == (4, 16, 3)
    assert est.score(X, y) > 0.85
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = TorchfitClassifier(epochs=1, seed=0).fit(digits.images[:50, None] / 16.0, digits.target[:50])
    assert images.model_.net[1].in_features == 64  # rows (1, 8, 8) are flattened


# ------------------------------------------------------------------ scikit-learn's own checks
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.SkipTestWarning")
@pytest.mark.slow  # about 110 fits on tiny data: ~10 s on 2 cores
@pytest.mark.parametrize("est", [
    TorchfitClassifier(epochs=5, lr=0.05, seed=0),
    TorchfitClassifier(MLP, module__n_in=FromData("n_features_in"), module__n_out=FromData("n_classes"),
                       module__hidden=8, epochs=5, lr=0.05, seed=0),
    TorchfitRegressor(epochs=5, lr=0.05, seed=0),
    TorchfitRegressor(nn.Linear, module__in_features=FromData("n_features_in"),
                      module__out_features=FromData("n_outputs"), epochs=5, lr=0.05, seed=0),
], ids=["classifier", "classifier-factory", "regressor", "regressor-factory"])
def test_check_estimator_passes_with_no_exclusions(est):
    from sklearn.utils.estimator_checks import check_estimator

    results = check_estimator(est, on_fail=None)
    failed = [(r["check_name"], str(r["exception"])[:200]) for r in results if r["status"] == "failed"]
    assert not failed, failed
    skipped = {r["check_name"] for r in results if r["status"] == "skipped"}
    assert skipped <= {"check_array_api_input"}, skipped  # skipped by scikit-learn unless SCIPY_ARRAY_API=1
    assert len(results) >= (54 if isinstance(est, TorchfitClassifier) else 52)
