"""Port: the keras.io guide "Training & evaluation with the built-in methods" (fchollet), its
MNIST MLP: Keras conventions (float32 labels, a sparse categorical loss on softmax outputs,
``validation_data``, ``evaluate``, ``predict``), string shortcuts, a custom loss on one-hot
labels, ``validation_split``, class weights and sample weights.

Changed: ``keras`` -> ``torchfit`` where the API maps (``keras.losses.X`` -> ``torchfit.losses.X``,
``keras.metrics.SparseCategoricalAccuracy()`` -> ``torchfit.metrics.Accuracy()``,
``keras.optimizers.RMSprop()`` -> ``"rmsprop"``, ``tf.*`` ops -> ``torch.*``); the Functional
model -> the same layers as an ``nn.Sequential`` wrapped by ``torchfit.Model`` (Keras layers are
not torch modules); ``fit(x_train, y_train, ...)`` -> ``fit(x=x_train, y=y_train, ...)`` (torchfit's
first argument is ``epochs``; keywords are valid Keras too); MNIST (a download) -> the
``mnist_arrays`` stand-in, so ``reshape(60000, 784)`` -> ``reshape(-1, 784)`` and 10,000 validation
rows -> 300. See docs/migration.md for each difference.
"""
import numpy as np
import pytest
import torch
from torch import nn

import torchfit
import torchfit.losses  # until torchfit/__init__.py imports it (the lead adds it)



def get_uncompiled_model():
    # keras.Input(784) -> Dense(64, relu) -> Dense(64, relu) -> Dense(10, softmax), in torch
    return torchfit.Model(nn.Sequential(
        nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10), nn.Softmax(dim=1)))


def get_compiled_model():
    model = get_uncompiled_model()
    model.compile(
        optimizer="rmsprop",
        loss="sparse_categorical_crossentropy",
        metrics=["sparse_categorical_accuracy"],
    )
    return model


@pytest.fixture
def data(mnist_arrays):
    (x_train, y_train), (x_test, y_test) = mnist_arrays

    # Preprocess the data (these are NumPy arrays)
    x_train = x_train.reshape(-1, 784).astype("float32") / 255
    x_test = x_test.reshape(-1, 784).astype("float32") / 255

    y_train = y_train.astype("float32")
    y_test = y_test.astype("float32")

    # Reserve 300 samples for validation
    x_val = x_train[-300:]
    y_val = y_train[-300:]
    x_train = x_train[:-300]
    y_train = y_train[:-300]
    return x_train, y_train, x_val, y_val, x_test, y_test


def test_api_overview_end_to_end(data):
    x_train, y_train, x_val, y_val, x_test, y_test = data
    model = get_uncompiled_model()
    model.compile(
        optimizer="rmsprop",  # Optimizer
        # Loss function to minimize
        loss=torchfit.losses.SparseCategoricalCrossentropy(),
        # List of metrics to monitor
        metrics=[torchfit.metrics.Accuracy()],
    )
    history = model.fit(
        x=x_train,
        y=y_train,
        batch_size=64,
        epochs=2,
        validation_data=(x_val, y_val),
    )
    results = model.evaluate(x=x_test, y=y_test, batch_size=128)
    predictions = model.predict(x_test[:3])

    assert list(history.columns) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]
    assert history["val_accuracy"].iloc[-1] > 0.5  # the stand-in digits are learnable
    assert set(results) == {"val_loss", "val_accuracy"}
    assert predictions.shape == (3, 10)
    assert torch.allclose(predictions.sum(dim=1), torch.ones(3))  # probabilities, as in Keras


def test_string_shortcuts_and_validation_split(data):
    x_train, y_train, *_ = data
    model = get_compiled_model()
    history = model.fit(x=x_train, y=y_train, batch_size=64, validation_split=0.2, epochs=1)
    assert list(history.columns) == ["epoch", "loss", "sparse_categorical_accuracy", "val_loss",
                                     "val_sparse_categorical_accuracy"]


def test_custom_loss_function_on_one_hot_labels(data):
    x_train, y_train, *_ = data

    def custom_mean_squared_error(y_true, y_pred):
        return torch.mean(torch.square(y_true - y_pred))

    model = get_uncompiled_model()
    model.compile(optimizer="adam", loss=custom_mean_squared_error)

    # We need to one-hot encode the labels to use MSE
    y_train_one_hot = torch.nn.functional.one_hot(torch.tensor(y_train).long(), num_classes=10)
    history = model.fit(x=x_train, y=y_train_one_hot, batch_size=64, epochs=1, verbose=0)
    assert list(history.columns) == ["epoch", "loss"]
    assert 0 < history["loss"].iloc[0] < 0.2


def test_custom_loss_class_on_one_hot_labels(data):
    x_train, y_train, *_ = data

    class CustomMSE(nn.Module):  # keras.losses.Loss -> nn.Module; call -> forward
        def __init__(self, regularization_factor=0.1, name="custom_mse"):
            super().__init__()
            self.regularization_factor = regularization_factor

        def forward(self, y_pred, y_true):  # torch's order: outputs first
            mse = torch.mean(torch.square(y_true - y_pred))
            reg = torch.mean(torch.square(0.5 - y_pred))
            return mse + reg * self.regularization_factor

    model = get_uncompiled_model()
    model.compile(optimizer="adam", loss=CustomMSE())
    y_train_one_hot = torch.nn.functional.one_hot(torch.tensor(y_train).long(), num_classes=10)
    history = model.fit(x=x_train, y=y_train_one_hot, batch_size=64, epochs=1, verbose=0)
    assert history["loss"].iloc[0] > 0


def test_logits_with_from_logits_true(data):
    x_train, y_train, *_ = data
    model = torchfit.Model(nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                                         nn.Linear(64, 10)))  # outputs = layers.Dense(10) (logits)
    model.compile(
        optimizer="rmsprop",
        loss=torchfit.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    history = model.fit(x=x_train, y=y_train, batch_size=64, epochs=1)
    assert list(history.columns) == ["epoch", "loss"]


def test_class_weight(data):
    x_train, y_train, *_ = data
    class_weight = {
        0: 1.0,
        1: 1.0,
        2: 1.0,
        3: 1.0,
        4: 1.0,
        # Set weight "2" for class "5",
        # making this class 2x more important
        5: 2.0,
        6: 1.0,
        7: 1.0,
        8: 1.0,
        9: 1.0,
    }
    model = get_compiled_model()
    history = model.fit(x=x_train, y=y_train, class_weight=class_weight, batch_size=64, epochs=1)
    assert len(history) == 1


def test_sample_weight(data):
    x_train, y_train, *_ = data
    sample_weight = np.ones(shape=(len(y_train),))
    sample_weight[y_train == 5] = 2.0

    model = get_compiled_model()
    history = model.fit(x=x_train, y=y_train, sample_weight=sample_weight, batch_size=64, epochs=1)
    assert len(history) == 1
